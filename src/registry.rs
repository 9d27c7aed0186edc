//! The [`Registry`]: resolves spec strings such as `flash(bq=64,bk=128)` to variants.
//!
//! The built-in variants are listed once, in [`crate::variants::BUILTIN`], next to their
//! `mod` lines; each variant's entry ([`VariantInfo`]) lives in its own file. The CLI, the
//! conformance checks, the sweep, the benches and the tests all enumerate a registry, so a
//! new variant is one file plus one line. Variants defined outside the crate join a registry
//! at run time with [`Registry::register`] and get the whole CLI through
//! [`crate::cli::main`].

use crate::attention::Attention;
use crate::error::{Error, ErrorKind, Result};
use crate::spec::Spec;
pub use crate::spec::{BuildFn, ParamInfo, Params, VariantInfo};
use crate::variants::BUILTIN;

/// A set of variants that specs are resolved against.
#[derive(Debug, Clone)]
pub struct Registry {
    variants: Vec<VariantInfo>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// The built-in variants ([`crate::variants::BUILTIN`]).
    pub fn builtin() -> Self {
        Self {
            variants: BUILTIN.to_vec(),
        }
    }

    /// Adds a variant; an error if its name is taken or its defaults do not build.
    pub fn register(&mut self, info: VariantInfo) -> Result<()> {
        if self.info(info.name).is_some() {
            return Err(Error::bad_spec(
                info.name,
                "a variant of this name is already registered",
            ));
        }
        check_bare_name(info.name)?;
        self.variants.push(info);
        let presets = if info.presets.is_empty() {
            &[info.name][..]
        } else {
            info.presets
        };
        if let Some(e) = presets.iter().find_map(|p| self.build(p).err()) {
            self.variants.pop();
            return Err(e);
        }
        Ok(())
    }

    /// The registered variants, in order.
    pub fn iter(&self) -> impl Iterator<Item = &VariantInfo> {
        self.variants.iter()
    }

    /// The registered names, in order.
    pub fn names(&self) -> Vec<String> {
        self.variants.iter().map(|v| v.name.to_string()).collect()
    }

    /// The variant called `name`, if registered.
    pub fn info(&self, name: &str) -> Option<&VariantInfo> {
        self.variants.iter().find(|v| v.name == name)
    }

    /// Builds the variant a spec string describes, e.g. `flash(bq=128,bk=128)`.
    pub fn build(&self, spec: &str) -> Result<Box<dyn Attention>> {
        let parsed: Spec = spec.parse()?;
        let info = self.info(&parsed.name).ok_or_else(|| {
            Error::new(ErrorKind::UnknownVariant {
                name: parsed.name.clone(),
                known: self.names(),
            })
        })?;
        for (key, _) in &parsed.params {
            if !info.params.iter().any(|p| p.name == key) {
                let known: Vec<&str> = info.params.iter().map(|p| p.name).collect();
                let message = if known.is_empty() {
                    format!("{} takes no parameters, got '{key}'", info.name)
                } else {
                    format!(
                        "unknown parameter '{key}' for {}; its parameters are {}",
                        info.name,
                        known.join(", ")
                    )
                };
                return Err(Error::bad_spec(spec, message));
            }
        }
        (info.build)(&Params::new(spec.trim().to_string(), info, parsed.params))
    }

    /// Builds every variant's presets (its defaults when it lists none): what a default
    /// sweep or check runs.
    pub fn defaults(&self) -> Vec<Box<dyn Attention>> {
        self.variants
            .iter()
            .flat_map(|v| {
                if v.presets.is_empty() {
                    vec![v.name]
                } else {
                    v.presets.to_vec()
                }
            })
            .map(|spec| self.build(spec))
            .collect::<Result<_>>()
            .expect("registered presets build (checked on registration)")
    }

    /// Builds a comma-separated list of specs (commas inside parentheses belong to a spec).
    pub fn build_list(&self, list: &str) -> Result<Vec<Box<dyn Attention>>> {
        crate::spec::split_list(list)?
            .iter()
            .map(|s| self.build(s))
            .collect()
    }
}

fn check_bare_name(name: &str) -> Result<()> {
    let spec: Spec = name.parse()?;
    if !spec.params.is_empty() || spec.name != name {
        return Err(Error::bad_spec(name, "a variant name must be a bare name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_round_trips_through_its_display() {
        let reg = Registry::builtin();
        for v in reg.defaults() {
            let spec = v.to_string();
            let again = reg.build(&spec).unwrap();
            assert_eq!(again.to_string(), spec);
            assert_eq!(again.name(), v.name());
        }
    }

    #[test]
    fn explicit_parameters_round_trip() {
        let reg = Registry::builtin();
        let v = reg.build("flash(bq=128,bk=128)").unwrap();
        assert_eq!(v.to_string(), "flash(bq=128,bk=128)");
        // Parameters may be given in any order and partially; Display is canonical.
        let v = reg.build("flash( bk = 32 )").unwrap();
        assert_eq!(v.to_string(), "flash(bq=64,bk=32)");
        assert_eq!(reg.build("full").unwrap().to_string(), "full");
    }

    fn err(spec: &str) -> String {
        Registry::builtin().build(spec).unwrap_err().to_string()
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let e = err("fulll");
        assert!(
            e.contains("unknown variant 'fulll'") && e.contains("full, flash"),
            "{e}"
        );
        let e = err("flash(bq=0)");
        assert!(e.contains("bq") && e.contains("at least 1"), "{e}");
        let e = err("flash(bq=-3)");
        assert!(
            e.contains("bq") && e.contains("non-negative integer"),
            "{e}"
        );
        let e = err("flash(bq=1.5)");
        assert!(e.contains("'1.5'"), "{e}");
        let e = err("flash(bz=8)");
        assert!(
            e.contains("unknown parameter 'bz'") && e.contains("bq, bk"),
            "{e}"
        );
        let e = err("full(bq=8)");
        assert!(
            e.contains("unknown parameter 'bq'") && e.contains("gemm"),
            "{e}"
        );
        let mut reg = Registry::builtin();
        let mut plain = crate::variants::full::INFO;
        plain.name = "plain";
        plain.params = &[];
        plain.build = |_| Ok(Box::new(crate::variants::full::Full::default()));
        reg.register(plain).unwrap();
        let e = reg.build("plain(x=1)").unwrap_err().to_string();
        assert!(e.contains("takes no parameters"), "{e}");
        let e = err("flash(bq=8");
        assert!(e.contains("bad spec"), "{e}");
    }

    #[test]
    fn lists_and_registration() {
        let mut reg = Registry::builtin();
        let vs = reg.build_list("full,flash(bq=16,bk=32)").unwrap();
        assert_eq!(vs.len(), 2);
        assert_eq!(vs[1].to_string(), "flash(bq=16,bk=32)");
        assert!(reg.register(crate::variants::full::INFO).is_err());
        let mut renamed = crate::variants::flash::INFO;
        renamed.name = "flash two";
        assert!(reg.register(renamed).is_err());
        assert_eq!(reg.names(), Registry::builtin().names());
    }
}
