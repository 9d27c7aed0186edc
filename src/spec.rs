//! Spec strings: `name` or `name(key=value,...)`, e.g. `flash(bq=64,bk=128)`.
//!
//! A [`Spec`] is only syntax; the [registry](crate::registry) checks the name, the keys and
//! the values. Lists of specs (as on the command line) are split on commas outside
//! parentheses by [`split_list`].

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A parsed spec string: a name and its `key=value` parameters in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The variant name.
    pub name: String,
    /// The parameters, in the order written.
    pub params: Vec<(String, String)>,
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
/// parentheses belong to a spec.
pub fn split_list(text: &str) -> Result<Vec<String>> {
    let mut items = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(Error::bad_spec(text, "unbalanced ')'"));
                }
            }
            ',' if depth == 0 => {
                items.push(text[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(Error::bad_spec(text, "unbalanced '('"));
    }
    items.push(text[start..].trim().to_string());
    if items.iter().any(String::is_empty) {
        return Err(Error::bad_spec(text, "empty entry in the list"));
    }
    Ok(items)
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
