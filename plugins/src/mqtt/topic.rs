//! MQTT topic filters: whether a topic matches one (`+` one level, `#` the
//! rest), and what the wildcards matched, for naming an event's endpoint.

/// Whether `filter` is a valid subscription filter: no empty filter, `#`
/// only as the last level, wildcards only as whole levels.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`{filter}`: `#` may only stand alone as the last level"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`{filter}`: `+` may only stand alone as a level"));
        }
    }
    Ok(())
}

/// The levels of `topic` that `filter`'s wildcards matched (the rest of the
/// topic for `#`, joined by `/`), or `None` when it does not match. Topics
/// starting with `$` (the broker's own) match no leading wildcard.
pub fn matches<'t>(filter: &str, topic: &'t str) -> Option<Vec<&'t str>> {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return None;
    }
    let mut captured = Vec::new();
    let mut rest = topic;
    let mut filter_levels = filter.split('/').peekable();
    while let Some(level) = filter_levels.next() {
        if level == "#" {
            // `a/#` also matches `a` itself.
            captured.push(rest);
            return Some(captured);
        }
        let (head, tail) = match rest.split_once('/') {
            Some((head, tail)) => (head, Some(tail)),
            None => (rest, None),
        };
        if level == "+" {
            captured.push(head);
        } else if level != head {
            return None;
        }
        match (tail, filter_levels.peek()) {
            (Some(tail), Some(_)) => rest = tail,
            (None, None) => return Some(captured),
            (None, Some(&"#")) => {
                captured.push("");
                return Some(captured);
            }
            _ => return None,
        }
    }
    None
}

/// Whether every topic `inner` matches is matched by `outer` too.
pub fn covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && (outer.starts_with('+') || outer.starts_with('#')) {
        return false;
    }
    let mut inner_levels = inner.split('/');
    for level in outer.split('/') {
        if level == "#" {
            return true;
        }
        match inner_levels.next() {
            Some("#") | None => return false,
            Some(_) if level == "+" => {}
            Some(other) if other == level => {}
            Some(_) => return false,
        }
    }
    inner_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        let table: &[(&str, &str, Option<&[&str]>)] = &[
            ("a/b", "a/b", Some(&[])),
            ("a/b", "a/c", None),
            ("a/b", "a/b/c", None),
            ("a/+", "a/b", Some(&["b"])),
            ("a/+", "a/b/c", None),
            ("+/+/state", "home/lamp/state", Some(&["home", "lamp"])),
            ("a/#", "a/b/c", Some(&["b/c"])),
            ("a/#", "a", Some(&[""])),
            ("#", "x/y", Some(&["x/y"])),
            ("zigbee2mqtt/+", "zigbee2mqtt/lamp", Some(&["lamp"])),
            ("+/x", "$SYS/x", None),
            ("#", "$SYS/broker", None),
            ("$SYS/#", "$SYS/broker/uptime", Some(&["broker/uptime"])),
            ("a/+/c", "a//c", Some(&[""])),
        ];
        for (filter, topic, want) in table {
            let got = matches(filter, topic);
            assert_eq!(got.as_deref(), *want, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn a_filter_covers_what_it_always_matches_too() {
        for (outer, inner, want) in [
            ("a/#", "a/b", true),
            ("a/#", "a/+/c", true),
            ("a/#", "a/#", true),
            ("#", "x/y/#", true),
            ("a/+", "a/b", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b/c", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("+/b", "a/b", true),
            ("#", "$SYS/x", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b", false),
        ] {
            assert_eq!(covers(outer, inner), want, "{outer} covers {inner}");
        }
    }

    #[test]
    fn bad_filters_are_refused() {
        for filter in ["", "a/#/b", "a#", "a/b+", "+a"] {
            assert!(check_filter(filter).is_err(), "{filter}");
        }
        for filter in ["a", "a/+/b", "#", "a/#", "+"] {
            assert!(check_filter(filter).is_ok(), "{filter}");
        }
    }
}
