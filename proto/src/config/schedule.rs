//! `schedule`: the times the coordinator starts a run by itself, as dstack's `Schedule` — one cron
//! expression or a list, in UTC.
//!
//! dstack reads each expression with APScheduler's `CronTrigger.from_crontab`, and Corral reads
//! them the same way: five fields (minute, hour, day of month, month, day of week); `*`, numbers,
//! `a-b` ranges, `/n` steps and `,` lists; `jan`..`dec` and `mon`..`sun`; **0 is Monday** (dstack's
//! documented exception to POSIX); and a time must match every field (with both a day of month and
//! a day of week, both must hold). [`croner`] does the matching: the day-of-week field is rewritten
//! into its numbering (1 Monday .. 7 Sunday) first.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use super::fields::{Issue, Object, Res, list, string};
use super::limits::{LimitError, MAX_CRON_BYTES, MAX_CRONS};
use super::yaml::{Node, Value};

/// When a run starts: at every time any of its expressions matches (UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// As written; each is checked by [`Schedule::check`].
    pub cron: Vec<String>,
}

impl Schedule {
    /// The first start strictly after `after_ms` (milliseconds since the epoch): the earliest over
    /// every expression. `None` when none will match again (none can, once checked).
    pub fn next_after_ms(&self, after_ms: i64) -> Option<i64> {
        let after = DateTime::<Utc>::from_timestamp_millis(after_ms)?;
        self.cron
            .iter()
            .filter_map(|c| cron(c).ok())
            .filter_map(|c| c.find_next_occurrence(&after, false).ok())
            .map(|t| t.timestamp_millis())
            .min()
    }

    /// Each expression against the cron rules and the limits; `Err` names `schedule.cron[i]`.
    pub fn check(&self) -> Result<(), LimitError> {
        let fail = |field: String, message: String| Err(LimitError { field, message });
        if self.cron.is_empty() {
            return fail("schedule.cron".into(), "at least one cron expression must be given".into());
        }
        if self.cron.len() > MAX_CRONS {
            return fail(
                "schedule.cron".into(),
                format!("at most {MAX_CRONS} cron expressions, found {}", self.cron.len()),
            );
        }
        for (i, c) in self.cron.iter().enumerate() {
            if let Err(message) = cron(c) {
                return fail(format!("schedule.cron[{i}]"), message);
            }
        }
        Ok(())
    }
}

/// The five fields of a crontab line, in order.
const FIELDS: [(&str, u32, u32); 5] =
    [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6)];
const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
/// dstack's (APScheduler's) weekday numbers: 0 is Monday.
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Reads one expression as dstack does; `Err` says which field is wrong and what to write.
pub fn cron(expr: &str) -> Result<Cron, String> {
    if expr.len() > MAX_CRON_BYTES {
        return Err(format!("a cron expression is at most {MAX_CRON_BYTES} bytes"));
    }
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "\"{expr}\" has {} field(s); a cron expression has five: minute hour day-of-month month day-of-week \
             (e.g. \"15 23 * * *\", every day at 23:15 UTC)",
            fields.len()
        ));
    }
    let mut rewritten = Vec::with_capacity(5);
    for (text, &(name, min, max)) in fields.iter().zip(&FIELDS) {
        let names: &[&str] = match name {
            "month" => &MONTHS,
            "day of week" => &WEEKDAYS,
            _ => &[],
        };
        let parts = field(text, min, max, names).map_err(|why| format!("{name} \"{text}\": {why}"))?;
        // Weekdays are renumbered from dstack's 0 = Monday to croner's 1 = Monday.
        let shift = u32::from(name == "day of week");
        rewritten.push(render(&parts, min, max, shift));
    }
    let pattern = rewritten.join(" ");
    let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).dom_and_dow(true).build();
    let parsed = parser.parse(&pattern).map_err(|e| format!("\"{expr}\" is not a cron expression: {e}"))?;
    // A day that never comes (`0 0 31 2 *`) is an error now, not a run that never starts.
    let now = Utc::now();
    if parsed.find_next_occurrence(&now, false).is_err() {
        return Err(format!("\"{expr}\" never matches a date"));
    }
    Ok(parsed)
}

/// One item of a field: its span (`None` for `*`) and its step.
type Part = (Option<(u32, u32)>, Option<u32>);

/// The items of a field, every number or name in them turned into a number and checked against
/// `min..=max`.
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<Part>, String> {
    let range = if names.is_empty() {
        format!("{min}-{max}")
    } else {
        format!("{min}-{max} or {}-{}", names[0], names[names.len() - 1])
    };
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            // Months are 1-based, weekdays 0-based: the name's index from `min`.
            return Ok(min + i as u32);
        }
        match s.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(n) => Err(format!("{n} is out of range (use {range})")),
            Err(_) if names.is_empty() => Err(format!("\"{s}\" is not a number (use {range}, `*`, `a-b`, `*/n`)")),
            Err(_) => Err(format!("\"{s}\" is neither a number nor a name (use {range})")),
        }
    };
    let mut parts = Vec::new();
    for token in text.split(',') {
        let (span, step) = match token.split_once('/') {
            Some((span, step)) => {
                let n = step.parse::<u32>().ok().filter(|&n| n > 0 && n <= max.max(1));
                let Some(n) = n else {
                    return Err(format!("step \"{step}\" must be a whole number from 1 to {}", max.max(1)));
                };
                (span, Some(n))
            }
            None => (token, None),
        };
        let bounds = match span {
            "*" => None,
            "" => return Err("an empty item (use `*`, a number, `a-b` or a list `a,b`)".into()),
            _ => match span.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (value(a)?, value(b)?);
                    if a > b {
                        return Err(format!("the range {span} runs backwards"));
                    }
                    Some((a, b))
                }
                None if step.is_some() => {
                    // APScheduler reads `a/n` as `a-max/n`.
                    Some((value(span)?, max))
                }
                None => {
                    let v = value(span)?;
                    Some((v, v))
                }
            },
        };
        parts.push((bounds, step));
    }
    Ok(parts)
}

/// A field in the syntax croner reads: numbers only (names turned into numbers), `a/n` written
/// out as `a-max/n`, each number moved up by `shift`.
fn render(parts: &[Part], min: u32, max: u32, shift: u32) -> String {
    let items: Vec<String> = parts
        .iter()
        .map(|&(bounds, step)| {
            let span = match bounds {
                None if shift == 0 || step.is_none() => "*".to_owned(),
                None => format!("{}-{}", min + shift, max + shift),
                Some((a, b)) if a == b => format!("{}", a + shift),
                Some((a, b)) => format!("{}-{}", a + shift, b + shift),
            };
            match step {
                Some(n) => format!("{span}/{n}"),
                None => span,
            }
        })
        .collect();
    items.join(",")
}

/// `schedule: {cron: "..."}` or `schedule: {cron: ["...", "..."]}`.
pub(crate) fn schedule(node: &Node, path: &str) -> Res<Schedule> {
    let o = Object::new(node, path, "schedule", &["cron"])?;
    let is_list = matches!(o.get("cron").map(|n| &n.value), Some(Value::Seq(_)));
    let exprs = o.require("cron", |n, p| match &n.value {
        Value::Seq(_) => list(n, p)?
            .iter()
            .enumerate()
            .map(|(i, item)| string(item, &format!("{p}[{i}]")).map(|s| (i, item.mark, s)))
            .collect::<Res<Vec<_>>>(),
        _ => Ok(vec![(0, n.mark, string(n, p)?)]),
    })?;
    let field = |i: usize| if is_list { o.path(&format!("cron[{i}]")) } else { o.path("cron") };
    if exprs.is_empty() {
        return Err(Issue::invalid(o.key_mark("cron"), o.path("cron"), "at least one cron expression must be given"));
    }
    if exprs.len() > MAX_CRONS {
        return Err(Issue::invalid(
            o.key_mark("cron"),
            o.path("cron"),
            format!("at most {MAX_CRONS} cron expressions"),
        ));
    }
    for (i, mark, expr) in &exprs {
        cron(expr).map_err(|why| Issue::invalid(*mark, field(*i), why))?;
    }
    Ok(Schedule { cron: exprs.into_iter().map(|(_, _, s)| s).collect() })
}

impl FromStr for Schedule {
    type Err = String;

    /// One expression, as `schedule: {cron: "..."}` gives it.
    fn from_str(s: &str) -> Result<Self, String> {
        cron(s)?;
        Ok(Self { cron: vec![s.to_owned()] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).expect("a test time").timestamp_millis()
    }

    fn next(expr: &str, after: &str) -> String {
        let s: Schedule = expr.parse().expect("a valid expression");
        let ms = s.next_after_ms(at(after)).expect("a next time");
        DateTime::<Utc>::from_timestamp_millis(ms).expect("a time").to_rfc3339()
    }

    #[test]
    fn next_times_are_utc_and_strictly_after() {
        assert_eq!(next("15 23 * * *", "2026-12-01T12:00:00Z"), "2026-12-01T23:15:00+00:00");
        assert_eq!(next("15 23 * * *", "2026-12-01T23:15:00Z"), "2026-12-02T23:15:00+00:00");
        assert_eq!(next("*/5 * * * *", "2026-12-01T12:03:59.500Z"), "2026-12-01T12:05:00+00:00");
        assert_eq!(next("0 0 1 jan *", "2026-06-01T00:00:00Z"), "2027-01-01T00:00:00+00:00");
    }

    #[test]
    fn weekdays_count_from_monday_as_in_dstack() {
        // 2026-12-01 is a Tuesday.
        assert_eq!(next("0 8 * * 0", "2026-12-01T00:00:00Z"), "2026-12-07T08:00:00+00:00");
        assert_eq!(next("0 8 * * mon-fri", "2026-12-04T09:00:00Z"), "2026-12-07T08:00:00+00:00");
        assert_eq!(next("0 8 * * 6", "2026-12-01T00:00:00Z"), "2026-12-06T08:00:00+00:00");
        assert_eq!(next("0 8 * * sun", "2026-12-01T00:00:00Z"), "2026-12-06T08:00:00+00:00");
        assert_eq!(next("0 8 * * 4-6", "2026-12-01T00:00:00Z"), "2026-12-04T08:00:00+00:00");
        // `*/2` over Monday..Sunday: Monday, Wednesday, Friday, Sunday.
        assert_eq!(next("0 8 * * */2", "2026-12-01T00:00:00Z"), "2026-12-02T08:00:00+00:00");
        assert_eq!(next("0 8 * * */2", "2026-12-05T00:00:00Z"), "2026-12-06T08:00:00+00:00");
    }

    #[test]
    fn day_of_month_and_day_of_week_must_both_hold() {
        // The 1st of a month that is a Monday: 2027-02-01.
        assert_eq!(next("0 0 1 * mon", "2026-12-01T12:00:00Z"), "2027-02-01T00:00:00+00:00");
    }

    #[test]
    fn the_earliest_of_several_expressions_wins() {
        let s = Schedule { cron: vec!["0 9 * * *".into(), "30 6 * * *".into()] };
        assert_eq!(s.next_after_ms(at("2026-12-01T07:00:00Z")), Some(at("2026-12-01T09:00:00Z")));
        assert_eq!(s.next_after_ms(at("2026-12-01T05:00:00Z")), Some(at("2026-12-01T06:30:00Z")));
    }

    #[test]
    fn errors_name_the_field_and_what_to_write() {
        let e = |expr: &str| cron(expr).expect_err("refused");
        assert!(e("* * * *").contains("has 4 field(s); a cron expression has five"), "{}", e("* * * *"));
        assert!(e("0 0 * * * *").contains("has 6 field(s)"));
        assert!(e("@daily").contains("has 1 field(s)"));
        assert_eq!(e("61 * * * *"), "minute \"61\": 61 is out of range (use 0-59)");
        assert_eq!(e("0 24 * * *"), "hour \"24\": 24 is out of range (use 0-23)");
        assert_eq!(e("0 0 0 * *"), "day of month \"0\": 0 is out of range (use 1-31)");
        assert_eq!(e("0 0 * 13 *"), "month \"13\": 13 is out of range (use 1-12 or jan-dec)");
        assert_eq!(e("0 0 * * 7"), "day of week \"7\": 7 is out of range (use 0-6 or mon-sun)");
        assert_eq!(e("0 0 * * fri-mon"), "day of week \"fri-mon\": the range fri-mon runs backwards");
        assert_eq!(e("*/0 * * * *"), "minute \"*/0\": step \"0\" must be a whole number from 1 to 59");
        assert_eq!(e("x * * * *"), "minute \"x\": \"x\" is not a number (use 0-59, `*`, `a-b`, `*/n`)");
        assert_eq!(
            e("0 0 * * funday"),
            "day of week \"funday\": \"funday\" is neither a number nor a name (use 0-6 or mon-sun)"
        );
        assert_eq!(e("1,,2 * * * *"), "minute \"1,,2\": an empty item (use `*`, a number, `a-b` or a list `a,b`)");
        assert_eq!(e("0 0 31 2 *"), "\"0 0 31 2 *\" never matches a date");
    }

    #[test]
    fn a_file_gives_one_expression_or_a_list_and_errors_say_where() {
        use crate::config::{Configuration, parse};
        let task = |schedule: &str| format!("type: task\nimage: busybox\ncommands: [x]\nschedule:\n{schedule}");
        let Configuration::Task(t) = parse(&task("  cron: \"15 23 * * *\"\n"), "t.yml").expect("parses") else {
            panic!("a task")
        };
        assert_eq!(t.schedule, Some(Schedule { cron: vec!["15 23 * * *".into()] }));
        let listed = parse(&task("  cron: [\"0 9 * * mon-fri\", \"0 12 * * sat\"]\n"), "t.yml").expect("parses");
        assert_eq!(listed.schedule().map(|s| s.cron.len()), Some(2));

        let e = parse(&task("  cron: [\"0 9 * * *\", \"61 * * * *\"]\n"), "t.yml").expect_err("refused");
        assert_eq!((e.field.as_str(), e.line), ("schedule.cron[1]", 5));
        assert_eq!(e.to_string(), "t.yml:5:23: schedule.cron[1]: minute \"61\": 61 is out of range (use 0-59)");
        assert!(!e.unsupported);
        let e = parse(&task("  cron: \"* * *\"\n"), "t.yml").expect_err("refused");
        assert_eq!(e.field, "schedule.cron");
        let e = parse(&task("  cron: []\n"), "t.yml").expect_err("refused");
        assert!(e.message.contains("at least one"), "{e}");
        let e = parse(&task("  crontab: \"* * * * *\"\n"), "t.yml").expect_err("refused");
        assert!(e.field.starts_with("schedule"), "{e}");
    }

    #[test]
    fn a_schedule_checks_every_expression() {
        let s = Schedule { cron: vec!["0 9 * * *".into(), "0 9 * *".into()] };
        let e = s.check().expect_err("the second is refused");
        assert_eq!(e.field, "schedule.cron[1]");
        assert!(Schedule { cron: vec![] }.check().is_err());
        assert!(Schedule { cron: vec!["* * * * *".into(); MAX_CRONS + 1] }.check().is_err());
    }
}
