//! The ids that cross hops as types of their own: a team (`TeamId`), a sandbox (`SandboxId`)
//! and a template (`TemplateName`, which a snapshot's name is too: a snapshot is the team's
//! template of that name). Each is a `String` that passed the one naming rule
//! ([`crate::names::valid_name`]) when it was made, so a function that takes a team and a
//! sandbox cannot be handed the two the wrong way round, and a value of one of these types
//! is always a name every hop accepts. Team ids are made by the control plane as `team-`
//! and 32 lowercase hex digits (an administrator may link an account to a team id of their
//! own); sandbox ids as `sb-` and 12 lowercase letters or digits: both fit the rule.

use crate::names::valid_name;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A name that broke the one naming rule: it is returned whole, for the caller's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName(pub String);

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a valid name: {:?}", self.0)
    }
}

impl std::error::Error for InvalidName {}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// On the wire it is the plain string (serde reads it through [`Self::new`], so a
        /// body cannot carry one that breaks the rule).
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id, if it follows the one naming rule.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidName> {
                let s = s.into();
                if valid_name(&s) {
                    Ok(Self(s))
                } else {
                    Err(InvalidName(s))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

id_type!(
    /// A team's id: whose sandboxes, templates, keys and usage a request may touch.
    TeamId
);
id_type!(
    /// A sandbox's id (a capsule's on `/v1/capsules`), unique across teams.
    SandboxId
);
id_type!(
    /// A template's public name: a base image's, or a team snapshot's.
    TemplateName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_naming_rule() {
        let team = TeamId::new("team-0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(team.as_str(), "team-0123456789abcdef0123456789abcdef");
        assert_eq!(team.to_string(), team.as_str());
        assert!(SandboxId::new("sb-abc123def456").is_ok());
        assert!(TemplateName::new("my.snap_1").is_ok());
        for bad in ["", "Sb-1", "../x", "a/b", &"a".repeat(64)] {
            assert_eq!(SandboxId::new(bad), Err(InvalidName(bad.to_string())));
            assert!(TeamId::new(bad).is_err());
            assert!(TemplateName::new(bad).is_err());
        }
    }

    #[test]
    fn the_wire_form_is_the_plain_string_and_is_checked() {
        let id = SandboxId::new("sb-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"sb-1\"");
        let back: SandboxId = serde_json::from_str("\"sb-1\"").unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<SandboxId>("\"SB/1\"").is_err());
    }
}
