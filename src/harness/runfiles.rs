//! Run files that never clobber: `<stamp>-<label>.csv` and `.json` created with
//! `create_new` (a second run in the same second gets `-2`), the JSON metadata, and the UTC
//! calendar of their names.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::results::artefacts::write_json;
use crate::results::record::RunState;

/// Creates `<dir>/<stamp>-<label>.csv` and `.json`, adding `-2`, `-3`, ... when a run of the
/// same name exists. Files are created with `create_new`, so nothing is ever overwritten.
pub(super) fn create_run_files(
    dir: &Path,
    stamp: &str,
    label: &str,
) -> Result<(String, PathBuf, PathBuf, File)> {
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    for attempt in 1..10_000 {
        let id = if attempt == 1 {
            format!("{stamp}-{label}")
        } else {
            format!("{stamp}-{label}-{attempt}")
        };
        let csv = dir.join(format!("{id}.csv"));
        let json = dir.join(format!("{id}.json"));
        if json.exists() {
            continue;
        }
        match OpenOptions::new().write(true).create_new(true).open(&csv) {
            Ok(file) => match OpenOptions::new().write(true).create_new(true).open(&json) {
                Ok(_) => return Ok((id, csv, json, file)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(&csv);
                    continue;
                }
                Err(e) => return Err(Error::io(&json, e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&csv, e)),
        }
    }
    Err(Error::io(
        dir,
        std::io::Error::other("too many runs with the same name"),
    ))
}

/// Run metadata that records how the run ended.
pub(super) trait Ending: serde::Serialize {
    /// Sets the run's end state, with the error that ended it, if any.
    fn set_end(&mut self, state: RunState, error: Option<String>);
}

impl Ending for crate::results::record::RunMeta {
    fn set_end(&mut self, state: RunState, error: Option<String>) {
        self.state = state;
        self.notes.extend(error);
    }
}

impl Ending for crate::results::decode::DecodeMeta {
    fn set_end(&mut self, state: RunState, error: Option<String>) {
        self.state = state;
        self.notes.extend(error);
    }
}

/// Records how the run ended in its JSON (replaced whole): `complete`, or `failed` with the
/// error of `body`, which is then returned (it matters more than one writing the metadata).
pub(super) fn end_run<M: Ending>(json: &Path, meta: &mut M, body: Result<()>) -> Result<()> {
    match body {
        Ok(()) => {
            meta.set_end(RunState::Complete, None);
            write_json(json, meta)
        }
        Err(e) => {
            meta.set_end(RunState::Failed, Some(e.to_string()));
            let _ = write_json(json, meta);
            Err(e)
        }
    }
}

/// Writes `rows` as the whole CSV at `path`: into a temporary file beside it, then renamed
/// over it, so the file always holds whole rows of one consistent moment of the run, and a
/// failed write (a full disk) leaves the previous contents.
pub(super) fn replace_csv<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| -> std::result::Result<(), csv::Error> {
        let mut writer = csv::Writer::from_path(&tmp)?;
        for row in rows {
            writer.serialize(row)?;
        }
        writer.flush()?;
        Ok(())
    })();
    let renamed = written
        .map_err(|e| Error::io(path, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

/// `(year, month, day, hour, minute, second)` in UTC.
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `YYYYMMDDTHHMMSSZ`.
pub fn utc_stamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_iso(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(0);
        assert_eq!(utc_iso(t), "1970-01-01T00:00:00Z");
        // 2024-02-29 12:34:56 UTC.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(utc_iso(t), "2024-02-29T12:34:56Z");
        assert_eq!(utc_stamp(t), "20240229T123456Z");
    }

    #[test]
    fn run_files_are_never_reused() {
        let dir = std::env::temp_dir().join(format!("attnbench-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = create_run_files(&dir, "20240101T000000Z", "x").unwrap();
        let b = create_run_files(&dir, "20240101T000000Z", "x").unwrap();
        assert_ne!(a.1, b.1);
        assert!(b.0.ends_with("-x-2"), "{}", b.0);
        let c = create_run_files(&dir, "20240101T000000Z", "a/b").unwrap();
        assert!(c.0.ends_with("-a_b"), "{}", c.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
