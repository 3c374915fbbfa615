//! The on-disk cache of compiled plugin components, keyed by the component's sha256 under a
//! directory named after the engine's compatibility hash, so an artifact is never loaded by an
//! engine (version or configuration) that did not produce it.
//!
//! Loading a cached artifact runs native code the host compiled earlier; the cache directory
//! must be as trusted as the host binary (it is created private to the host's user).

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::io;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiled components on disk for one engine configuration (process-wide).
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    /// `<root>/<engine compatibility hash>/`.
    dir: PathBuf,
}

impl ArtifactCache {
    /// Opens (creating it) the cache directory for `engine` under `root`.
    pub(crate) fn open(root: &Path, engine: &Engine) -> io::Result<Self> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = root.join(format!("engine-{:016x}", hasher.finish()));
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self { dir })
    }

    fn path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}.cwasm"))
    }

    /// The cached compilation of the component with this hash, if there is a usable one.
    /// An unreadable or incompatible artifact is deleted and treated as missing.
    pub(crate) fn load(&self, engine: &Engine, sha256_hex: &str) -> Option<Component> {
        let path = self.path(sha256_hex);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store` below from `Component::serialize` of an engine
        // with the same compatibility hash (it is in that engine's directory), and the directory
        // is private to the host. Wasmtime still checks the header and refuses an artifact whose
        // engine settings differ.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &path) };
        match loaded {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "discarding unusable cached artifact");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Saves a compiled component. Failures only cost a recompilation later, so they are logged.
    pub(crate) fn store(&self, sha256_hex: &str, component: &Component) {
        let result = component
            .serialize()
            .map_err(io::Error::other)
            .and_then(|bytes| {
                let tmp = self
                    .dir
                    .join(format!(".{sha256_hex}.{}.tmp", std::process::id()));
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, self.path(sha256_hex))
            });
        if let Err(err) = result {
            tracing::warn!(error = %err, "could not cache a compiled plugin");
        }
    }
}
