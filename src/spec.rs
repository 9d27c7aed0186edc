//! Spec strings: `name` or `name(key=value,...)`, e.g. `flash(bq=64,bk=128)`.
//!
//! A [`Spec`] is only syntax; the [registry](crate::registry) checks the name, the keys and
//! the values. Lists of specs (as on the command line) are split on commas outside
//! parentheses by [`split_list`].
//!
//! This module also holds what a variant declares about itself ([`VariantInfo`],
//! [`ParamInfo`]) and reads its parameters through ([`Params`]): a leaf that the variants
//! import and that imports no variant. A variant's canonical spec (its `Display`) is written
//! by [`VariantInfo::write_spec`] from the declared parameter list, so its name and each
//! parameter name are spelled once, in its `VariantInfo`.

use std::fmt;
use std::str::FromStr;

use crate::attention::Attention;
use crate::error::{Error, Result};

/// A parsed spec string: a name and its `key=value` parameters in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The variant name.
    pub name: String,
    /// The parameters, in the order written.
    pub params: Vec<(String, String)>,
}

/// One parameter of a variant.
#[derive(Debug, Clone, Copy)]
pub struct ParamInfo {
    /// The key in the spec string.
    pub name: &'static str,
    /// The default value, as written in a spec.
    pub default: &'static str,
    /// A one-line description.
    pub help: &'static str,
}

/// How to build a variant from its parameters.
pub type BuildFn = fn(&Params<'_>) -> Result<Box<dyn Attention>>;

/// A registered variant: its name, summary, parameters and constructor.
#[derive(Debug, Clone, Copy)]
pub struct VariantInfo {
    /// The registry name (the spec's name part).
    pub name: &'static str,
    /// A one-line description for `attnbench list`: what it computes.
    pub summary: &'static str,
    /// Its time complexity, for the variant table (e.g. `O(n w d)`).
    pub time: &'static str,
    /// Its extra memory beyond the inputs and output, for the variant table.
    pub memory: &'static str,
    /// The parameters, in canonical order.
    pub params: &'static [ParamInfo],
    /// The specs a default sweep or check runs; empty means the name alone (all defaults).
    /// A variant with a mode parameter lists one spec per mode, e.g. `linear(phi=relu)`.
    pub presets: &'static [&'static str],
    /// A spec small enough to picture the pattern at n = 64 in reports (empty: the defaults).
    pub preview: &'static str,
    /// The constructor; it reads parameters through [`Params`].
    pub build: BuildFn,
}

/// The parameters of one spec, with the variant's defaults for those not given.
#[derive(Debug)]
pub struct Params<'a> {
    spec: String,
    info: &'a VariantInfo,
    given: Vec<(String, String)>,
}

impl<'a> Params<'a> {
    /// The parameters `given` in `spec` for the variant `info` (the registry checked the keys).
    pub(crate) fn new(spec: String, info: &'a VariantInfo, given: Vec<(String, String)>) -> Self {
        Self { spec, info, given }
    }

    /// The raw value of `name`: the one given, else its default.
    ///
    /// # Panics
    /// If the variant did not declare `name` in its [`VariantInfo::params`] (a bug in the
    /// variant, not a user error).
    pub fn raw(&self, name: &str) -> &str {
        if let Some((_, v)) = self.given.iter().find(|(k, _)| k == name) {
            return v;
        }
        self.info
            .params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.default)
            .unwrap_or_else(|| panic!("{} reads undeclared parameter '{name}'", self.info.name))
    }

    /// Whether `name` was written in the spec (rather than defaulted).
    pub fn given(&self, name: &str) -> bool {
        self.given.iter().any(|(k, _)| k == name)
    }

    /// Parses the value of `name` with `FromStr`.
    pub fn parse<T: std::str::FromStr>(&self, name: &str, expected: &str) -> Result<T> {
        let raw = self.raw(name);
        raw.parse()
            .map_err(|_| self.invalid(name, &format!("expected {expected}, got '{raw}'")))
    }

    /// A non-negative integer, at most 2^40 (larger sizes are not meaningful and would
    /// overflow position arithmetic).
    pub fn usize(&self, name: &str) -> Result<usize> {
        let n: usize = self.parse(name, "a non-negative integer")?;
        if n > 1 << 40 {
            return Err(self.invalid(name, &format!("{n} is too large (at most 2^40)")));
        }
        Ok(n)
    }

    /// An integer of at least 1.
    pub fn positive(&self, name: &str) -> Result<usize> {
        match self.usize(name)? {
            0 => Err(self.invalid(name, "must be at least 1, got 0")),
            n => Ok(n),
        }
    }

    /// A `true`/`false` flag.
    pub fn bool(&self, name: &str) -> Result<bool> {
        self.parse(name, "true or false")
    }

    /// An error naming parameter `name` of this spec.
    pub fn invalid(&self, name: &str, message: &str) -> Error {
        Error::bad_spec(
            &self.spec,
            format!("parameter {name} of {}: {message}", self.info.name),
        )
    }
}

impl VariantInfo {
    /// Writes the canonical spec of a variant of this kind: the name, then `key=value` for
    /// each parameter whose value is `Some`, in the order of [`params`](VariantInfo::params)
    /// (`values[i]` is the value of `params[i]`; `None` leaves a parameter out, e.g. one
    /// that does not apply or an `auto` default). The bare name when no value is given.
    ///
    /// # Panics
    /// If `values` does not have one entry per parameter (a bug in the variant; the
    /// registry's round-trip tests build every preset and catch it).
    pub fn write_spec(
        &self,
        f: &mut fmt::Formatter<'_>,
        values: &[Option<&dyn fmt::Display>],
    ) -> fmt::Result {
        assert_eq!(
            values.len(),
            self.params.len(),
            "{}: one value per declared parameter",
            self.name
        );
        f.write_str(self.name)?;
        let mut sep = "(";
        for (p, v) in self.params.iter().zip(values) {
            if let Some(v) = v {
                write!(f, "{sep}{}={v}", p.name)?;
                sep = ",";
            }
        }
        if sep == "," {
            f.write_str(")")?;
        }
        Ok(())
    }

    /// The specs a default sweep or check runs: [`presets`](VariantInfo::presets), or the
    /// bare name when there are none.
    pub fn default_specs(&self) -> Vec<&'static str> {
        if self.presets.is_empty() {
            vec![self.name]
        } else {
            self.presets.to_vec()
        }
    }
}

impl FromStr for Spec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |msg: &str| Error::bad_spec(text, msg);
        let t = text.trim();
        let (name, rest) = match t.find('(') {
            Some(open) => {
                if !t.ends_with(')') {
                    return Err(bad("missing ')' at the end"));
                }
                (&t[..open], Some(&t[open + 1..t.len() - 1]))
            }
            None => {
                if t.contains(')') {
                    return Err(bad("')' without '('"));
                }
                (t, None)
            }
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("empty variant name"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "a variant name may hold only letters, digits, '_' and '-'",
            ));
        }
        let mut params: Vec<(String, String)> = Vec::new();
        if let Some(body) = rest {
            if body.contains(['(', ')']) {
                return Err(bad("nested parentheses"));
            }
            if !body.trim().is_empty() {
                for item in body.split(',') {
                    let Some((k, v)) = item.split_once('=') else {
                        return Err(bad(&format!(
                            "parameter '{}' must be written key=value",
                            item.trim()
                        )));
                    };
                    let (k, v) = (k.trim(), v.trim());
                    if k.is_empty() || v.is_empty() {
                        return Err(bad(&format!(
                            "parameter '{}' must be written key=value",
                            item.trim()
                        )));
                    }
                    if params.iter().any(|(seen, _)| seen == k) {
                        return Err(bad(&format!("parameter '{k}' is given twice")));
                    }
                    params.push((k.to_string(), v.to_string()));
                }
            }
        }
        Ok(Spec {
            name: name.to_string(),
            params,
        })
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.params.is_empty() {
            f.write_str("(")?;
            for (i, (k, v)) in self.params.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{k}={v}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Splits `full,flash(bq=64,bk=128)` into `["full", "flash(bq=64,bk=128)"]`: commas inside
/// parentheses, or inside the braces of a [budget list](expand), belong to a spec.
pub fn split_list(text: &str) -> Result<Vec<String>> {
    let mut items = Vec::new();
    let (mut parens, mut braces) = (0i32, 0i32);
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => parens += 1,
            ')' => parens -= 1,
            '{' => braces += 1,
            '}' => braces -= 1,
            ',' if parens == 0 && braces == 0 => {
                items.push(text[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
        if parens < 0 {
            return Err(Error::bad_spec(text, "unbalanced ')'"));
        }
        if braces < 0 {
            return Err(Error::bad_spec(text, "unbalanced '}'"));
        }
    }
    if parens != 0 {
        return Err(Error::bad_spec(text, "unbalanced '('"));
    }
    if braces != 0 {
        return Err(Error::bad_spec(text, "unbalanced '{'"));
    }
    items.push(text[start..].trim().to_string());
    if items.iter().any(String::is_empty) {
        return Err(Error::bad_spec(text, "empty entry in the list"));
    }
    Ok(items)
}

/// The most specs one spec's budget lists may expand to.
pub const MAX_EXPANSION: usize = 256;

/// Expands the budget lists of one spec: each `{a,b,...}` stands for each of its values in
/// turn, so `blocktopk(k={2,4},score={mean,bound})` is the four specs `blocktopk(k=2,
/// score=mean)`, `blocktopk(k=2,score=bound)`, `blocktopk(k=4,score=mean)`,
/// `blocktopk(k=4,score=bound)` (the first list varies slowest). A spec without braces is
/// itself. Lists do not nest; an empty value, an unbalanced brace or more than
/// [`MAX_EXPANSION`] specs is an error.
pub fn expand(spec: &str) -> Result<Vec<String>> {
    let Some(open) = spec.find('{') else {
        if spec.contains('}') {
            return Err(Error::bad_spec(spec, "unbalanced '}'"));
        }
        return Ok(vec![spec.to_string()]);
    };
    let close = spec[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| Error::bad_spec(spec, "unbalanced '{'"))?;
    let inner = &spec[open + 1..close];
    if inner.contains('{') || spec[..open].contains('}') {
        return Err(Error::bad_spec(spec, "budget lists {a,b,...} do not nest"));
    }
    let values: Vec<&str> = inner.split(',').map(str::trim).collect();
    if values.iter().any(|v| v.is_empty()) {
        return Err(Error::bad_spec(
            spec,
            "empty value in a budget list {a,b,...}",
        ));
    }
    let mut out = Vec::new();
    for v in values {
        let one = format!("{}{v}{}", &spec[..open], &spec[close + 1..]);
        out.extend(expand(&one)?);
        if out.len() > MAX_EXPANSION {
            return Err(Error::bad_spec(
                spec,
                format!("expands to more than {MAX_EXPANSION} specs"),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_params() {
        let s: Spec = "flash(bq=64, bk=128)".parse().unwrap();
        assert_eq!(s.name, "flash");
        assert_eq!(
            s.params,
            vec![("bq".into(), "64".into()), ("bk".into(), "128".into())]
        );
        assert_eq!(s.to_string(), "flash(bq=64,bk=128)");
        let s: Spec = " full ".parse().unwrap();
        assert_eq!(s.to_string(), "full");
        let s: Spec = "full()".parse().unwrap();
        assert!(s.params.is_empty());
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in [
            "",
            "()",
            "flash(bq=64",
            "flash bq=64)",
            "flash(bq)",
            "flash(bq=)",
            "flash(=3)",
            "flash(bq=1,bq=2)",
            "flash(bq=(1))",
            "fl ash",
            "flash(bq=1,)",
        ] {
            let err = bad.parse::<Spec>().unwrap_err();
            assert!(err.to_string().contains("bad spec"), "{bad}: {err}");
        }
    }

    #[test]
    fn budget_lists_expand_to_every_combination_in_order() {
        assert_eq!(expand("flash").unwrap(), vec!["flash"]);
        assert_eq!(
            expand("blocktopk(k={2, 4},score={mean,bound})").unwrap(),
            vec![
                "blocktopk(k=2,score=mean)",
                "blocktopk(k=2,score=bound)",
                "blocktopk(k=4,score=mean)",
                "blocktopk(k=4,score=bound)",
            ]
        );
        assert_eq!(
            split_list("full,linear(phi=favor,m={64,128}),window(w={1,2})").unwrap(),
            vec!["full", "linear(phi=favor,m={64,128})", "window(w={1,2})"]
        );
        for bad in [
            "topk(k={1,2)",
            "topk(k=1,2})",
            "topk(k={})",
            "topk(k={1,,2})",
            "topk(k={{1}})",
        ] {
            let err = expand(bad).unwrap_err();
            assert!(err.to_string().contains("bad spec"), "{bad}: {err}");
        }
        let many = format!("topk(k={{{}}})", vec!["1"; MAX_EXPANSION + 1].join(","));
        assert!(expand(&many).unwrap_err().to_string().contains("more than"));
    }

    #[test]
    fn splits_lists_outside_parentheses() {
        assert_eq!(
            split_list("full, flash(bq=64,bk=128),window").unwrap(),
            vec!["full", "flash(bq=64,bk=128)", "window"]
        );
        assert!(split_list("full,,flash").is_err());
        assert!(split_list("flash(bq=1").is_err());
        assert!(split_list("flash)(").is_err());
    }
}
