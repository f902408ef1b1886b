//! The base templates: what each is made of ([`Recipe`]: its packages, its own files, the
//! services its init starts; `minimal`, then the code runner's on a copy of `minimal`'s tree)
//! and the two build steps of one (its cached base tree, then its image). The kernel and the
//! initramfs, the step runner and the build lock are `mod.rs`'s.

use std::fs;
use std::path::PathBuf;

use super::cache::{self, KeyBuilder, Layout};
use super::{
    code_runner, rootfs, work_dir, BaseTemplate, ImageConfig, ImageError, Ran, Steps, BASE_RECIPE,
    EXTEND_RECIPE, MINIMAL_TEMPLATE, ROOTFS_RECIPE,
};

/// What makes one base template: its Debian packages, the files added to its image (at
/// assembly, so changing one does not run apt again) and the lines its init runs before envd.
pub(super) struct Recipe {
    pub(super) name: &'static str,
    /// Other names the template answers to (one image, listed once per name).
    aliases: &'static [&'static str],
    /// Prefix of its base tree's cache directory.
    cache_prefix: &'static str,
    /// Packages of its base tree: with `extends` false the debootstrap's, else the ones apt
    /// installs on a copy of the previous recipe's tree.
    packages: Vec<&'static str>,
    /// Whether the tree starts from the previous recipe's (cheaper than a second debootstrap,
    /// and apt resolves dependencies fully where debootstrap does not).
    pub(super) extends: bool,
    files: Vec<(String, String, u32)>,
    services: String,
}

impl Recipe {
    /// The template under its name and each alias.
    pub(super) fn named(&self, rootfs: PathBuf, size_bytes: u64) -> Vec<BaseTemplate> {
        std::iter::once(self.name)
            .chain(self.aliases.iter().copied())
            .map(|name| BaseTemplate {
                name: name.to_string(),
                rootfs: rootfs.clone(),
                size_bytes,
            })
            .collect()
    }
}

/// The base templates, in build order: `minimal`, then the code runner.
pub(super) fn recipes() -> Vec<Recipe> {
    vec![
        Recipe {
            name: MINIMAL_TEMPLATE,
            aliases: &[],
            cache_prefix: "base-",
            packages: rootfs::PACKAGES.to_vec(),
            extends: false,
            files: Vec::new(),
            services: String::new(),
        },
        Recipe {
            name: code_runner::TEMPLATE,
            aliases: code_runner::ALIASES,
            cache_prefix: "code-runner-",
            packages: code_runner::PACKAGES.to_vec(),
            extends: true,
            files: code_runner::files(),
            services: code_runner::services(),
        },
    ]
}

/// A template's base tree in the cache and its key.
pub(super) struct BaseTree {
    dir: PathBuf,
    key: String,
}

/// The two steps of one base template: its base tree (debootstrap, or apt on a copy of
/// `parent`; cached under `cache/<prefix><key>`) and its image. Returns the template under
/// each of its names, and its tree for the next recipe.
pub(super) fn build_template(
    cfg: &ImageConfig,
    layout: &Layout,
    steps: &mut Steps<'_>,
    recipe: &Recipe,
    mirror: &str,
    parent: Option<&BaseTree>,
) -> Result<(Vec<BaseTemplate>, BaseTree), ImageError> {
    // Base tree.
    let mut base_key = KeyBuilder::new("base");
    if let Some(parent) = parent {
        base_key = base_key
            .field("recipe", EXTEND_RECIPE)
            .field("parent", &parent.key);
    }
    let mut base_key = base_key
        .field("recipe", BASE_RECIPE)
        .field("suite", rootfs::SUITE)
        .field("variant", rootfs::VARIANT)
        .field("mirror", mirror)
        .field("packages", recipe.packages.join(","))
        .field("useradd", rootfs::useradd_args().join(" "));
    for (path, text, mode) in rootfs::base_files() {
        base_key = base_key
            .field("file", &path)
            .field("text", &text)
            .field("mode", mode.to_string());
    }
    let base_key = base_key.finish();
    let base_dir = layout
        .cache_dir()
        .join(format!("{}{}", recipe.cache_prefix, &base_key[..16]));
    let label = match parent {
        None => format!(
            "debootstrap {} ({} + {} …)",
            rootfs::SUITE,
            rootfs::VARIANT,
            recipe.packages[..2].join(", ")
        ),
        Some(_) => format!(
            "{} tree: apt-get install {}",
            recipe.name,
            recipe.packages.join(" ")
        ),
    };
    steps.run(label, || {
        if !cfg.force && base_dir.is_dir() {
            return Ok(Ran::Cached(()));
        }
        let work = work_dir(layout, &format!("base-{}", recipe.name))?;
        let target = work.join("root");
        match parent {
            None => rootfs::debootstrap(&target, mirror, &recipe.packages)?,
            Some(p) => rootfs::extend(&p.dir, &target, &recipe.packages)?,
        }
        let cache_dir = layout.cache_dir();
        fs::create_dir_all(&cache_dir).map_err(|e| ImageError::io("create", &cache_dir, e))?;
        if base_dir.exists() {
            fs::remove_dir_all(&base_dir).map_err(|e| ImageError::io("remove", &base_dir, e))?;
        }
        fs::rename(&target, &base_dir).map_err(|e| ImageError::io("rename into", &base_dir, e))?;
        Ok(Ran::Built(()))
    })?;

    // Template image.
    let rootfs_path = layout.template_rootfs(recipe.name);
    let init = rootfs::init_script(&recipe.services);
    let resolv = rootfs::resolv_conf();
    let mut rootfs_key = KeyBuilder::new("rootfs")
        .field("recipe", ROOTFS_RECIPE)
        .field("base", &base_key)
        .field("envd-sha256", cache::file_sha256(&cfg.envd_bin)?)
        .field("init", &init)
        .field("resolv", &resolv);
    for (path, text, mode) in &recipe.files {
        rootfs_key = rootfs_key
            .field("file", path)
            .field("text", text)
            .field("mode", mode.to_string());
    }
    let rootfs_key = rootfs_key.finish();
    let size_bytes = steps.run(
        format!("{}/rootfs.ext4 (envd + wrenn-init)", recipe.name),
        || {
            if !cfg.force && cache::is_current(&rootfs_path, &rootfs_key) {
                let len = fs::metadata(&rootfs_path)
                    .map_err(|e| ImageError::io("inspect", &rootfs_path, e))?
                    .len();
                return Ok(Ran::Cached(len));
            }
            let work = work_dir(layout, &format!("rootfs-{}", recipe.name))?;
            let staging = work.join("staging");
            let out = work.join("rootfs.ext4");
            let size = rootfs::assemble(
                &base_dir,
                &staging,
                &cfg.envd_bin,
                &init,
                &resolv,
                &recipe.files,
                &out,
            )?;
            cache::publish_file(&out, &rootfs_path, &rootfs_key)?;
            Ok(Ran::Built(size))
        },
    )?;
    // Only the base tree in use is kept.
    cache::remove_siblings(&layout.cache_dir(), recipe.cache_prefix, &base_dir)?;
    Ok((
        recipe.named(rootfs_path, size_bytes),
        BaseTree {
            dir: base_dir,
            key: base_key,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_comes_first_and_the_code_runner_extends_it_under_both_names() {
        let all = recipes();
        assert_eq!(all[0].name, MINIMAL_TEMPLATE);
        assert!(!all[0].extends && all[0].files.is_empty() && all[0].services.is_empty());
        let cr = &all[1];
        assert_eq!(cr.name, "code-runner-beta");
        assert!(cr.extends && cr.services.contains("jupyter-service"));
        assert_ne!(cr.cache_prefix, all[0].cache_prefix);
        assert!(!cr.cache_prefix.starts_with(all[0].cache_prefix));
        let named = cr.named(PathBuf::from("/x/rootfs.ext4"), 7);
        let names: Vec<&str> = named.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["code-runner-beta", "python-interpreter-v0-beta"]);
        assert!(named
            .iter()
            .all(|t| t.rootfs == std::path::Path::new("/x/rootfs.ext4") && t.size_bytes == 7));
    }
}
