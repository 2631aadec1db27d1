//! Commit times: parsing what people type, printing what people read. Pure.

/// Parses a commit timestamp: seconds (`1577836800` or `@1577836800`), or a
/// UTC date `YYYY-MM-DD[THH:MM[:SS]][Z]` (a space may replace the `T`).
#[allow(clippy::many_single_char_names)] // y, d, h: the calendar's own names
pub fn parse(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "cannot read {s:?} as a time; use seconds since 1970 (@1577836800) or 2020-01-01T00:00:00Z"
        )
    };
    let t = s.trim();
    if let Ok(n) = t.strip_prefix('@').unwrap_or(t).parse::<u64>() {
        return Ok(n);
    }
    let t = t
        .strip_suffix('Z')
        .or_else(|| t.strip_suffix("+00:00"))
        .unwrap_or(t);
    let (date, time) = t.split_once(['T', ' ']).unwrap_or((t, "00:00:00"));
    let d: Vec<&str> = date.split('-').collect();
    let tm: Vec<&str> = time.split(':').collect();
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let ([y, mo, da], true) = (
        <[&str; 3]>::try_from(d).map_err(|_| bad())?,
        (2..=3).contains(&tm.len()),
    ) else {
        return Err(bad());
    };
    let (y, mo, da) = (num(y)?, num(mo)?, num(da)?);
    let (h, mi) = (num(tm[0])?, num(tm[1])?);
    let sec = if tm.len() == 3 { num(tm[2])? } else { 0 };
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&da)
        || h > 23
        || mi > 59
        || sec > 60
        || !(1970..=9999).contains(&y)
    {
        return Err(bad());
    }
    // Days from civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec).map_err(|_| bad())
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        for (s, want) in [
            ("1577836800", 1_577_836_800),
            ("@1577836800", 1_577_836_800),
            ("2020-01-01T00:00:00Z", 1_577_836_800),
            ("2020-01-01", 1_577_836_800),
            ("2020-01-01 00:00", 1_577_836_800),
            ("2024-02-29T12:34:56Z", 1_709_210_096),
            ("1970-01-01T00:00:00+00:00", 0),
        ] {
            assert_eq!(parse(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "99999999999999999-01-01",
            "10000-01-01",
            "yesterday",
            "2020-13-01",
            "2020-01-01T25:00",
            "2020/01/01",
            "-5",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for secs in [
            0u64,
            1_577_836_800,
            1_709_210_096,
            4_102_444_799,
            951_782_400,
        ] {
            assert_eq!(parse(&format(secs)), Ok(secs));
        }
        assert_eq!(format(1_577_836_800), "2020-01-01T00:00:00Z");
    }
}
