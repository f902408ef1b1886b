//! [`wire_enum!`]: a fieldless enum whose variants have one name each on the wire, spelled once.

/// Declares a fieldless enum from `Variant = "wire_name",` lines. The name is the variant's
/// serde name, [`Display`](std::fmt::Display) and `as_str()`; `ALL` lists the variants.
/// Attributes on a variant (docs, `#[serde(other)]`) are kept. An error code's lines may also
/// give its HTTP status, `Variant = "wire_name" (404),`, which `status()` answers.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal ($status:literal), )+
        }
    ) => {
        wire_enum! {
            $(#[$meta])*
            pub enum $name {
                $( $(#[$vmeta])* $variant = $wire, )+
            }
        }

        impl $name {
            /// The HTTP status answered with this code.
            pub const fn status(self) -> u16 {
                match self {
                    $(Self::$variant => $status,)+
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name written on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use wire_enum;

/// Asserts every variant of a wire enum serializes to its name and reads back as itself.
#[cfg(test)]
pub(crate) fn assert_wire_names<T>(all: &[T], name: impl Fn(&T) -> &'static str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for v in all {
        let json = serde_json::to_string(v).unwrap();
        assert_eq!(json, format!("\"{}\"", name(v)));
        assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), v);
    }
}
