use std::time::Duration;

/// `90s`, `15m`, `24h`, `7d`, or plain seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 15m, 24h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_units() {
        assert_eq!(super::parse("15m").map(|d| d.as_secs()), Ok(900));
        assert_eq!(super::parse("2h").map(|d| d.as_secs()), Ok(7200));
        assert_eq!(super::parse("30").map(|d| d.as_secs()), Ok(30));
        assert!(super::parse("5y").is_err());
        assert!(super::parse("m").is_err());
    }
}
