//! Pure parsers for the `/proc` files `sysmetrics` reads: each takes the
//! file's text and returns a metric ready to serialize as an event body, or
//! says what it could not find. No IO here, so every kernel quirk is a unit
//! test with a sample text.
//!
//! Field names carry their unit (`_bytes`, `_percent`, `_seconds`); the
//! load averages are plain numbers of runnable tasks.

use std::fmt;

use serde::Serialize;

/// What a file lacked or held that did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn field<T: std::str::FromStr>(text: Option<&str>, what: &str) -> Result<T, ParseError> {
    let text = text.ok_or_else(|| ParseError(format!("no {what}")))?;
    text.parse()
        .map_err(|_| ParseError(format!("{what} is not a number: {text:?}")))
}

/// Rounds a percentage to two decimals: more is noise, and shorter bodies
/// read better on the platform.
pub fn round_percent(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// `100 * part / whole`, or 0 for an empty whole.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round_percent(part as f64 * 100.0 / whole as f64)
    }
}

/// The `load` metric, from `/proc/loadavg` (`0.52 0.58 0.59 1/467 12345`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Load {
    /// Average number of runnable tasks over the last minute.
    pub load_1m: f64,
    pub load_5m: f64,
    pub load_15m: f64,
    /// Tasks runnable right now.
    pub runnable_tasks: u64,
    /// Tasks (threads) that exist.
    pub total_tasks: u64,
}

pub fn parse_loadavg(text: &str) -> Result<Load, ParseError> {
    let mut fields = text.split_whitespace();
    let load_1m = field(fields.next(), "1-minute load")?;
    let load_5m = field(fields.next(), "5-minute load")?;
    let load_15m = field(fields.next(), "15-minute load")?;
    let tasks = fields.next().ok_or_else(|| ParseError("no task counts".into()))?;
    let (runnable, total) = tasks
        .split_once('/')
        .ok_or_else(|| ParseError(format!("task counts are not `runnable/total`: {tasks:?}")))?;
    Ok(Load {
        load_1m,
        load_5m,
        load_15m,
        runnable_tasks: field(Some(runnable), "runnable task count")?,
        total_tasks: field(Some(total), "total task count")?,
    })
}

/// The `memory` metric, from `/proc/meminfo`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Memory {
    pub total_bytes: u64,
    /// What new programs can still get without swapping (`MemAvailable`).
    pub available_bytes: u64,
    /// `total_bytes - available_bytes`: what a user means by "used".
    pub used_bytes: u64,
    pub used_percent: f64,
    /// Entirely unused memory (`MemFree`), usually far below `available_bytes`.
    pub free_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
}

pub fn parse_meminfo(text: &str) -> Result<Memory, ParseError> {
    // Lines are `Key:   value kB`; the kernel's "kB" are KiB.
    let value = |key: &str| -> Result<Option<u64>, ParseError> {
        let Some(line) = text.lines().find(|line| line.split(':').next() == Some(key)) else {
            return Ok(None);
        };
        let rest = line[key.len() + 1..].trim();
        let (number, unit) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let number: u64 = field(Some(number), key)?;
        match unit.trim() {
            "kB" => Ok(Some(number.saturating_mul(1024))),
            "" => Ok(Some(number)),
            other => Err(ParseError(format!("{key} has an unknown unit {other:?}"))),
        }
    };
    let required = |key: &str| value(key)?.ok_or_else(|| ParseError(format!("no `{key}:` line")));
    let total = required("MemTotal")?;
    let free = required("MemFree")?;
    // MemAvailable exists since Linux 3.14; before, free + page cache is the
    // usual estimate.
    let available = match value("MemAvailable")? {
        Some(available) => available,
        None => free + value("Buffers")?.unwrap_or(0) + value("Cached")?.unwrap_or(0),
    }
    .min(total);
    let swap_total = value("SwapTotal")?.unwrap_or(0);
    let swap_free = value("SwapFree")?.unwrap_or(0).min(swap_total);
    let used = total - available;
    Ok(Memory {
        total_bytes: total,
        available_bytes: available,
        used_bytes: used,
        used_percent: percent(used, total),
        free_bytes: free,
        swap_total_bytes: swap_total,
        swap_used_bytes: swap_total - swap_free,
    })
}

/// Cumulative CPU time from the `cpu` line of `/proc/stat`, in clock ticks.
/// Usage is the difference of two samples: see [`CpuTimes::usage_since`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every state but idle and iowait.
    pub busy: u64,
    pub iowait: u64,
    /// All states; guest time is already inside user time and not added twice.
    pub total: u64,
    /// Number of `cpuN` lines: the CPUs online.
    pub cores: u32,
}

/// CPU use between two samples of [`CpuTimes`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUsage {
    pub used_percent: f64,
    pub iowait_percent: f64,
}

pub fn parse_stat(text: &str) -> Result<CpuTimes, ParseError> {
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some("cpu"))
        .ok_or_else(|| ParseError("no `cpu` line".into()))?;
    // user nice system idle iowait irq softirq steal guest guest_nice: older
    // kernels stop after idle (iowait came in 2.5.41, steal in 2.6.11).
    let ticks = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| field::<u64>(Some(t), "a cpu time"))
        .collect::<Result<Vec<u64>, _>>()?;
    if ticks.len() < 4 {
        return Err(ParseError(format!(
            "the `cpu` line has {} times, not at least 4",
            ticks.len()
        )));
    }
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    let (idle, iowait) = (at(3), at(4));
    let total: u64 = ticks.iter().sum();
    let cores = text
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Ok(CpuTimes {
        busy: total - idle - iowait,
        iowait,
        total,
        cores: u32::try_from(cores).unwrap_or(u32::MAX),
    })
}

impl CpuTimes {
    /// Use since `earlier`, or `None` when no clock tick passed in between
    /// (two reads too close together) or the counters went backwards (a
    /// different machine, or a counter reset).
    pub fn usage_since(&self, earlier: &CpuTimes) -> Option<CpuUsage> {
        let total = self.total.checked_sub(earlier.total).filter(|&t| t > 0)?;
        // Single states may step back a little on some kernels (iowait is
        // estimated); clamp rather than report nonsense.
        let busy = self.busy.saturating_sub(earlier.busy).min(total);
        let iowait = self.iowait.saturating_sub(earlier.iowait).min(total);
        Some(CpuUsage {
            used_percent: percent(busy, total),
            iowait_percent: percent(iowait, total),
        })
    }
}

/// The `uptime` metric, from `/proc/uptime` (`350735.47 234388.90`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Uptime {
    /// Seconds since the gateway booted.
    pub uptime_seconds: f64,
}

pub fn parse_uptime(text: &str) -> Result<Uptime, ParseError> {
    Ok(Uptime {
        uptime_seconds: field(text.split_whitespace().next(), "uptime")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_is_read_and_bad_texts_say_what_is_wrong() {
        let load = parse_loadavg("0.52 0.58 0.59 1/467 12345\n").unwrap();
        assert_eq!(
            load,
            Load {
                load_1m: 0.52,
                load_5m: 0.58,
                load_15m: 0.59,
                runnable_tasks: 1,
                total_tasks: 467
            }
        );
        let table = [
            ("", "no 1-minute load"),
            ("0.5 0.5", "no 15-minute load"),
            ("0.5 x 0.5 1/2 3", "5-minute load is not a number: \"x\""),
            ("0.5 0.5 0.5", "no task counts"),
            ("0.5 0.5 0.5 12 3", "not `runnable/total`"),
            ("0.5 0.5 0.5 1/y 3", "total task count is not a number"),
        ];
        for (text, fragment) in table {
            let err = parse_loadavg(text).unwrap_err().to_string();
            assert!(err.contains(fragment), "{text:?}: {err:?} lacks {fragment:?}");
        }
    }

    const MEMINFO: &str = "\
MemTotal:       16318480 kB
MemFree:         1032384 kB
MemAvailable:    8159240 kB
Buffers:          512000 kB
Cached:          6000000 kB
SwapCached:            0 kB
SwapTotal:       2097148 kB
SwapFree:        1048574 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn meminfo_gives_bytes_and_a_used_percentage() {
        let memory = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(
            memory,
            Memory {
                total_bytes: 16318480 * 1024,
                available_bytes: 8159240 * 1024,
                used_bytes: (16318480 - 8159240) * 1024,
                used_percent: 50.0,
                free_bytes: 1032384 * 1024,
                swap_total_bytes: 2097148 * 1024,
                swap_used_bytes: (2097148 - 1048574) * 1024,
            }
        );
    }

    #[test]
    fn meminfo_of_an_old_kernel_estimates_available_memory() {
        // Before Linux 3.14 there is no MemAvailable, and a box may have no swap lines.
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        let memory = parse_meminfo(old).unwrap();
        assert_eq!(memory.available_bytes, 400 * 1024);
        assert_eq!(memory.used_percent, 60.0);
        assert_eq!((memory.swap_total_bytes, memory.swap_used_bytes), (0, 0));
    }

    #[test]
    fn meminfo_without_the_essential_lines_or_with_garbage_is_an_error() {
        let table = [
            ("", "no `MemTotal:` line"),
            ("MemTotal: 1000 kB\n", "no `MemFree:` line"),
            ("MemTotal: lots kB\nMemFree: 1 kB\n", "MemTotal is not a number"),
            (
                "MemTotal: 1000 MB\nMemFree: 1 kB\n",
                "MemTotal has an unknown unit \"MB\"",
            ),
        ];
        for (text, fragment) in table {
            let err = parse_meminfo(text).unwrap_err().to_string();
            assert!(err.contains(fragment), "{text:?}: {err:?} lacks {fragment:?}");
        }
        // A key that merely starts like a wanted one is not taken for it.
        let err = parse_meminfo("MemTotalX: 5 kB\nMemFree: 1 kB\n").unwrap_err();
        assert_eq!(err.to_string(), "no `MemTotal:` line");
    }

    const STAT_1: &str = "\
cpu  1000 0 500 8000 500 0 0 0 0 0
cpu0 500 0 250 4000 250 0 0 0 0 0
cpu1 500 0 250 4000 250 0 0 0 0 0
intr 12345 0 0
ctxt 999
cpufreq_something 3
";

    #[test]
    fn stat_gives_cpu_times_and_the_number_of_cores() {
        assert_eq!(
            parse_stat(STAT_1).unwrap(),
            CpuTimes {
                busy: 1500,
                iowait: 500,
                total: 10000,
                cores: 2
            }
        );
        // A 2.4 kernel's line has only four times.
        let old = parse_stat("cpu 10 20 30 40\ncpu0 10 20 30 40\n").unwrap();
        assert_eq!((old.busy, old.iowait, old.total, old.cores), (60, 0, 100, 1));
        // guest and guest_nice are inside user and nice: not counted twice.
        let guest = parse_stat("cpu 100 0 0 100 0 0 0 0 100 100\n").unwrap();
        assert_eq!((guest.busy, guest.total), (100, 200));
    }

    #[test]
    fn stat_without_a_usable_cpu_line_is_an_error() {
        let table = [
            ("", "no `cpu` line"),
            ("cpu0 1 2 3 4\n", "no `cpu` line"),
            ("cpu 1 2 3\n", "has 3 times, not at least 4"),
            ("cpu 1 2 x 4\n", "a cpu time is not a number: \"x\""),
        ];
        for (text, fragment) in table {
            let err = parse_stat(text).unwrap_err().to_string();
            assert!(err.contains(fragment), "{text:?}: {err:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn cpu_usage_is_the_busy_share_between_two_samples() {
        let earlier = parse_stat(STAT_1).unwrap();
        // 1000 more ticks: 250 busy (user + system), 700 idle, 50 iowait.
        let later = parse_stat("cpu  1200 0 550 8700 550 0 0 0 0 0\ncpu0 1 1 1 1\ncpu1 1 1 1 1\n").unwrap();
        let usage = later.usage_since(&earlier).unwrap();
        assert_eq!(usage.used_percent, 25.0);
        assert_eq!(usage.iowait_percent, 5.0);
        assert_eq!(earlier.usage_since(&earlier), None, "no tick passed");
        assert_eq!(earlier.usage_since(&later), None, "counters went backwards");
        // iowait stepping back is clamped, not an overflow.
        let odd = CpuTimes {
            iowait: 400,
            busy: 2000,
            total: 11000,
            cores: 2,
        };
        let usage = odd.usage_since(&earlier).unwrap();
        assert_eq!((usage.used_percent, usage.iowait_percent), (50.0, 0.0));
    }

    #[test]
    fn uptime_is_the_first_number() {
        assert_eq!(parse_uptime("350735.47 234388.90\n").unwrap().uptime_seconds, 350735.47);
        assert_eq!(parse_uptime("").unwrap_err().to_string(), "no uptime");
        assert!(parse_uptime("soon 1").is_err());
    }

    #[test]
    fn percentages_have_two_decimals() {
        assert_eq!(percent(1, 3), 33.33);
        assert_eq!(percent(2, 3), 66.67);
        assert_eq!(percent(5, 0), 0.0);
    }
}
