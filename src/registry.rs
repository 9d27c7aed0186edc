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
use crate::pattern::{Geometry, Mask, Pattern};
use crate::results::artefacts::{PREVIEW_N, Preview, Previews};
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
        // Its presets and its preview (what the report draws) must build.
        let mut specs = info.default_specs();
        if !info.preview.is_empty() {
            specs.push(info.preview);
        }
        if let Some(e) = specs.iter().find_map(|p| self.build(p).err()) {
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
            .flat_map(VariantInfo::default_specs)
            .map(|spec| self.build(spec))
            .collect::<Result<_>>()
            .expect("registered presets build (checked on registration)")
    }

    /// Previews of the pattern variants among `variants`, one per registry name (drawn from its
    /// [`preview`](crate::spec::VariantInfo::preview) spec, a small instance of the pattern that
    /// is legible at n = 64), bidirectional and causal: what a sweep records for its report
    /// ([`SweepConfig::previews`](crate::harness::sweep::SweepConfig::previews)). Variants this registry does not know are
    /// left out.
    pub fn previews(&self, variants: &[Box<dyn Attention>]) -> Previews {
        let g = Geometry::new(PREVIEW_N, PREVIEW_N);
        let mut names: Vec<&str> = Vec::new();
        let mut panels = Vec::new();
        for v in variants {
            if v.pattern().is_none() || names.contains(&v.name()) {
                continue;
            }
            names.push(v.name());
            let Some(info) = self.info(v.name()) else {
                continue;
            };
            let spec = if info.preview.is_empty() {
                info.name
            } else {
                info.preview
            };
            let Ok(small) = self.build(spec) else {
                continue;
            };
            let Some(pattern) = small.pattern() else {
                continue;
            };
            if !pattern.unsupported(g).is_empty() {
                continue;
            }
            for causal in [false, true] {
                let mask = Mask::new(Some(pattern), causal);
                let rows = (0..g.n_q)
                    .map(|i| {
                        (0..g.n_kv)
                            .map(|j| if mask.allows(g, i, j) { '#' } else { '.' })
                            .collect()
                    })
                    .collect();
                let title = format!("{small}{}", if causal { " causal" } else { "" });
                panels.push(Preview { title, rows });
            }
        }
        Previews {
            n: PREVIEW_N,
            panels,
        }
    }

    /// Builds a comma-separated list of specs (commas inside parentheses belong to a spec),
    /// each [expanded](crate::spec::expand) over its budget lists: `topk(k={64,256})` is two
    /// variants.
    pub fn build_list(&self, list: &str) -> Result<Vec<Box<dyn Attention>>> {
        let mut out = Vec::new();
        for item in crate::spec::split_list(list)? {
            for spec in crate::spec::expand(&item)? {
                out.push(self.build(&spec)?);
            }
        }
        Ok(out)
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

    /// Every parameter of every variant, given a non-default value, appears in the canonical
    /// spec under its own name and parses back to the same spec: `Display`, which writes
    /// values by position, agrees with `build`, which reads them by name.
    #[test]
    fn every_parameter_round_trips_under_its_own_name() {
        let reg = Registry::builtin();
        let mut checked = 0;
        for info in reg.iter() {
            for p in info.params {
                let value = match p.default {
                    "true" => "false".to_string(),
                    "false" => "true".to_string(),
                    d => match d.parse::<u64>() {
                        // One off the default: different, and valid for every parameter
                        // here (e.g. c <= block, dilation >= 1).
                        Ok(0) => "1".to_string(),
                        Ok(1) => "2".to_string(),
                        Ok(n) => (n - 1).to_string(),
                        Err(_) => continue, // a mode, e.g. phi or isa: covered by presets
                    },
                };
                let base = info.default_specs()[0];
                // Mode-dependent parameters (favor's m, seed) need their mode's preset.
                let base = info
                    .default_specs()
                    .into_iter()
                    .find(|s| {
                        reg.build(s)
                            .unwrap()
                            .to_string()
                            .contains(&format!("{}=", p.name))
                    })
                    .unwrap_or(base);
                let spec = base.to_string();
                let spec = match spec.strip_suffix(')') {
                    Some(open) => format!("{open},{}={value})", p.name),
                    None => format!("{}({}={value})", info.name, p.name),
                };
                let spec = dedup_param(&spec, p.name);
                // One below an even-only default (lsh's buckets) is odd: two below then.
                let spec = match (reg.build(&spec), p.default.parse::<u64>()) {
                    (Err(_), Ok(n)) if n >= 2 => dedup_param(
                        &spec.replace(
                            &format!("{}={value}", p.name),
                            &format!("{}={}", p.name, n - 2),
                        ),
                        p.name,
                    ),
                    _ => spec,
                };
                let value = spec
                    .split(&format!("{}=", p.name))
                    .last()
                    .and_then(|rest| rest.split([',', ')']).next())
                    .unwrap()
                    .to_string();
                let v = reg.build(&spec).unwrap();
                let shown = v.to_string();
                assert!(
                    shown.contains(&format!("{}={value}", p.name)),
                    "{spec} displays as {shown}"
                );
                assert_eq!(reg.build(&shown).unwrap().to_string(), shown);
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} parameters checked");
    }

    /// `spec` with only the last `name=` parameter kept.
    fn dedup_param(spec: &str, name: &str) -> String {
        let (head, body) = spec.split_once('(').unwrap();
        let items: Vec<&str> = body.trim_end_matches(')').split(',').collect();
        let last = items
            .iter()
            .rposition(|i| i.starts_with(&format!("{name}=")))
            .unwrap();
        let kept: Vec<&str> = items
            .iter()
            .enumerate()
            .filter(|(k, i)| *k == last || !i.starts_with(&format!("{name}=")))
            .map(|(_, i)| *i)
            .collect();
        format!("{head}({})", kept.join(","))
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
