//! PostgreSQL column values to Debezium's JSON representation (schemas disabled).
//!
//! Both halves of a connector read values in PostgreSQL's *text* format — the snapshot with
//! the simple query protocol, the stream from pgoutput — on sessions pinned to
//! `DateStyle=ISO`, `TimeZone=UTC`, `IntervalStyle=iso_8601` and `bytea_output=hex`
//! ([`SESSION_OPTIONS`]), so one converter serves both and a row read by the snapshot looks
//! exactly like the same row streamed later.
//!
//! The mapping follows Debezium's PostgreSQL defaults (`time.precision.mode=adaptive`,
//! `decimal.handling.mode=precise`, `binary.handling.mode=bytes`,
//! `interval.handling.mode=numeric`); what differs is listed on [`ValueKind`].

use base64::Engine as _;
use serde_json::{json, Value};

use crate::error::CdcError;

/// Startup options for every session whose text output the converter reads.
pub const SESSION_OPTIONS: &str =
    "-c datestyle=ISO,YMD -c timezone=UTC -c intervalstyle=iso_8601 -c bytea_output=hex -c extra_float_digits=1";

/// The placeholder Debezium writes for an unchanged TOASTed value that pgoutput did not send
/// (the table's REPLICA IDENTITY is not FULL).
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// How `numeric`, `decimal` and `money` values are written (Debezium's
/// `decimal.handling.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalHandling {
    /// The unscaled value as big-endian two's-complement bytes, base64 (Kafka Connect's
    /// `Decimal`); a `numeric` without a declared scale is `{"scale": s, "value": base64}`
    /// (Debezium's `VariableScaleDecimal`). NaN and infinities become `null`. Default.
    #[default]
    Precise,
    /// A JSON number (may lose precision). NaN and infinities become `null`.
    Double,
    /// The decimal text, e.g. `"12.50"`.
    String,
}

impl std::str::FromStr for DecimalHandling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "precise" => Ok(Self::Precise),
            "double" => Ok(Self::Double),
            "string" => Ok(Self::String),
            other => Err(format!(
                "unknown decimal handling {other:?}; expected precise, double or string"
            )),
        }
    }
}

/// What a column's type is, resolved once from `pg_type` (domains to their base type,
/// arrays to their element type).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueKind {
    /// `boolean`, and `bit(1)`.
    Bool,
    /// `smallint`.
    Int16,
    /// `integer`.
    Int32,
    /// `bigint`, `oid`.
    Int64,
    /// `real`, `double precision`: numbers; NaN and ±Infinity as the strings `"NaN"`,
    /// `"Infinity"`, `"-Infinity"` (JSON has no such numbers).
    Float,
    /// `numeric(p, s)`; `scale` is `None` when the column declares none.
    Numeric {
        /// The declared scale.
        scale: Option<i32>,
    },
    /// `money` (`lc_monetary` must format it as `$1,234.56`, the C locale's form); scale 2.
    Money,
    /// `bytea`: base64 of the bytes.
    Bytes,
    /// `date`: days since 1970-01-01 (`io.debezium.time.Date`).
    Date,
    /// `time(p)`: milliseconds past midnight for p ≤ 3, else microseconds.
    Time {
        /// Declared precision; `None` means 6.
        precision: Option<i32>,
    },
    /// `timestamp(p)`: milliseconds since the epoch for p ≤ 3, else microseconds; the
    /// value is read as UTC.
    Timestamp {
        /// Declared precision; `None` means 6.
        precision: Option<i32>,
    },
    /// `timestamptz`: ISO-8601 in UTC, e.g. `"2018-06-20T13:37:03.5Z"`
    /// (`io.debezium.time.ZonedTimestamp`).
    TimestampTz,
    /// `timetz`: ISO-8601 time in UTC, e.g. `"13:37:03Z"` (`io.debezium.time.ZonedTime`).
    TimeTz,
    /// `interval`: approximate microseconds, a month counted as 365.25 / 12 days
    /// (`io.debezium.time.MicroDuration`).
    Interval,
    /// An array of `element`s (any dimension) as nested JSON arrays.
    Array(Box<ValueKind>),
    /// Everything written as its text: text types, `uuid`, `json`/`jsonb` (the document as a
    /// string, as Debezium's `io.debezium.data.Json`), `xml`, enums, network addresses,
    /// ranges, and types Debezium has no default mapping for (Debezium drops those unless
    /// `include.unknown.datatypes`; we keep the text). `bit(n > 1)`, `varbit` and geometric
    /// types are also text here, where Debezium writes bytes or structs.
    Text,
}

impl ValueKind {
    /// The kind of a built-in type oid with its type modifier, `None` for a type that needs
    /// the catalog (enums, domains, user arrays).
    pub fn builtin(oid: u32, typmod: i32) -> Option<ValueKind> {
        let precision = || (typmod >= 0).then_some(typmod);
        Some(match oid {
            16 => ValueKind::Bool,
            1560 if typmod == 1 => ValueKind::Bool,
            21 => ValueKind::Int16,
            23 => ValueKind::Int32,
            20 | 26 => ValueKind::Int64,
            700 | 701 => ValueKind::Float,
            1700 => ValueKind::Numeric {
                // numeric typmod: ((precision << 16) | scale) + 4 (VARHDRSZ).
                scale: (typmod >= 4).then(|| (typmod - 4) & 0xffff),
            },
            790 => ValueKind::Money,
            17 => ValueKind::Bytes,
            1082 => ValueKind::Date,
            1083 => ValueKind::Time {
                precision: precision(),
            },
            1114 => ValueKind::Timestamp {
                precision: precision(),
            },
            1184 => ValueKind::TimestampTz,
            1266 => ValueKind::TimeTz,
            1186 => ValueKind::Interval,
            18 | 19 | 25 | 114 | 142 | 650 | 774 | 829 | 869 | 1042 | 1043 | 1560 | 1562 | 2950
            | 3802 | 3904 | 3906 | 3908 | 3910 | 3912 | 3926 => ValueKind::Text,
            1000 => array(ValueKind::Bool),
            1001 => array(ValueKind::Bytes),
            1005 => array(ValueKind::Int16),
            1007 => array(ValueKind::Int32),
            1016 | 1028 => array(ValueKind::Int64),
            1021 | 1022 => array(ValueKind::Float),
            1231 => array(ValueKind::Numeric { scale: None }),
            1182 => array(ValueKind::Date),
            1183 => array(ValueKind::Time { precision: None }),
            1115 => array(ValueKind::Timestamp { precision: None }),
            1185 => array(ValueKind::TimestampTz),
            1187 => array(ValueKind::Interval),
            199 | 1002 | 1009 | 1014 | 1015 | 2951 | 3807 | 143 | 1041 | 651 | 1040 => {
                array(ValueKind::Text)
            }
            _ => return None,
        })
    }
}

fn array(element: ValueKind) -> ValueKind {
    ValueKind::Array(Box::new(element))
}

/// Converts one value in text format. `None` is SQL NULL.
pub fn convert(
    kind: &ValueKind,
    text: Option<&str>,
    decimals: DecimalHandling,
) -> Result<Value, CdcError> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    let bad = |what: &str| CdcError::Decode(format!("cannot read {text:?} as {what}"));
    Ok(match kind {
        ValueKind::Bool => match text {
            "t" | "1" => Value::Bool(true),
            "f" | "0" => Value::Bool(false),
            _ => return Err(bad("boolean")),
        },
        ValueKind::Int16 | ValueKind::Int32 | ValueKind::Int64 => {
            json!(text.parse::<i64>().map_err(|_| bad("integer"))?)
        }
        ValueKind::Float => match text {
            "NaN" | "Infinity" | "-Infinity" => Value::String(text.to_string()),
            _ => json!(text.parse::<f64>().map_err(|_| bad("float"))?),
        },
        ValueKind::Numeric { scale } => {
            numeric(text, *scale, decimals).ok_or_else(|| bad("numeric"))?
        }
        ValueKind::Money => {
            let negative = text.starts_with('-') || text.starts_with('(');
            let digits: String = text
                .chars()
                .filter(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let plain = if negative {
                format!("-{digits}")
            } else {
                digits
            };
            numeric(&plain, Some(2), decimals).ok_or_else(|| bad("money"))?
        }
        ValueKind::Bytes => {
            let hex = text.strip_prefix("\\x").ok_or_else(|| bad("bytea (hex)"))?;
            Value::String(base64(&decode_hex(hex).ok_or_else(|| bad("bytea (hex)"))?))
        }
        ValueKind::Date => json!(days_since_epoch(text).ok_or_else(|| bad("date"))?),
        ValueKind::Time { precision } => {
            let micros = time_micros(text).ok_or_else(|| bad("time"))?;
            if precision.is_some_and(|p| p <= 3) {
                json!(micros / 1000)
            } else {
                json!(micros)
            }
        }
        ValueKind::Timestamp { precision } => {
            let micros = match text {
                // Debezium (after the JDBC driver) writes these fixed values.
                "infinity" => 9_223_372_036_825_200_000,
                "-infinity" => -9_223_372_036_832_400_000,
                _ => timestamp_micros(text).ok_or_else(|| bad("timestamp"))?,
            };
            if precision.is_some_and(|p| p <= 3) && !text.ends_with("infinity") {
                json!(micros.div_euclid(1000))
            } else {
                json!(micros)
            }
        }
        ValueKind::TimestampTz => match text {
            "infinity" | "-infinity" => Value::String(text.to_string()),
            _ => Value::String(zoned_timestamp(text).ok_or_else(|| bad("timestamptz"))?),
        },
        ValueKind::TimeTz => Value::String(zoned_time(text).ok_or_else(|| bad("timetz"))?),
        ValueKind::Interval => {
            json!(interval_micros(text).ok_or_else(|| bad("interval (ISO 8601)"))?)
        }
        ValueKind::Array(element) => {
            let parsed = parse_array(text).ok_or_else(|| bad("array"))?;
            array_value(element, &parsed, decimals)?
        }
        ValueKind::Text => Value::String(text.to_string()),
    })
}

/// The value Debezium writes for an unchanged TOASTed column of this kind.
pub fn unavailable(kind: &ValueKind) -> Value {
    match kind {
        ValueKind::Bytes => Value::String(base64(UNAVAILABLE_VALUE.as_bytes())),
        ValueKind::Array(element) => Value::Array(vec![unavailable(element)]),
        _ => Value::String(UNAVAILABLE_VALUE.to_string()),
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn numeric(text: &str, declared_scale: Option<i32>, mode: DecimalHandling) -> Option<Value> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return Some(match mode {
            DecimalHandling::String => Value::String(text.to_string()),
            _ => Value::Null,
        });
    }
    match mode {
        DecimalHandling::String => {
            text.parse::<f64>().ok()?;
            Some(Value::String(text.to_string()))
        }
        DecimalHandling::Double => Some(json!(text.parse::<f64>().ok()?)),
        DecimalHandling::Precise => {
            let (negative, body) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text),
            };
            let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
            if int_part.is_empty() && frac_part.is_empty()
                || !int_part
                    .bytes()
                    .chain(frac_part.bytes())
                    .all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let text_scale = frac_part.len() as i32;
            let scale = declared_scale.unwrap_or(text_scale);
            // PostgreSQL prints exactly the declared scale; pad or trim to it all the same.
            let mut digits = format!("{int_part}{frac_part}");
            if scale > text_scale {
                digits.extend(std::iter::repeat_n('0', (scale - text_scale) as usize));
            } else if scale < text_scale {
                digits.truncate(digits.len() - (text_scale - scale) as usize);
            }
            let value = base64(&twos_complement(&digits, negative));
            Some(match declared_scale {
                Some(_) => Value::String(value),
                None => json!({ "scale": scale, "value": value }),
            })
        }
    }
}

/// Big-endian two's-complement bytes of the decimal integer `digits` (Java's
/// `BigInteger.toByteArray`: the shortest form that keeps the sign bit right).
fn twos_complement(digits: &str, negative: bool) -> Vec<u8> {
    // Magnitude in base 256, little-endian while building.
    let mut magnitude: Vec<u8> = vec![0];
    for d in digits.bytes() {
        let mut carry = u32::from(d - b'0');
        for byte in magnitude.iter_mut() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            magnitude.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    while magnitude.len() > 1 && magnitude.last() == Some(&0) {
        magnitude.pop();
    }
    let is_zero = magnitude.iter().all(|b| *b == 0);
    let mut bytes = magnitude;
    if negative && !is_zero {
        // Two's complement: invert and add one.
        let mut carry = 1u16;
        for byte in bytes.iter_mut() {
            let v = u16::from(!*byte) + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if bytes.last().is_some_and(|b| b & 0x80 == 0) {
            bytes.push(0xff);
        }
        while bytes.len() > 1
            && bytes[bytes.len() - 1] == 0xff
            && bytes[bytes.len() - 2] & 0x80 != 0
        {
            bytes.pop();
        }
    } else if bytes.last().is_some_and(|b| b & 0x80 != 0) {
        bytes.push(0);
    }
    bytes.reverse();
    bytes
}

/// `YYYY-MM-DD[ BC]` to days since 1970-01-01.
fn days_since_epoch(text: &str) -> Option<i64> {
    let date = parse_date(text)?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((date - epoch).num_days())
}

fn parse_date(text: &str) -> Option<chrono::NaiveDate> {
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (text, false),
    };
    let mut parts = body.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    // 1 BC is year 0 in the proleptic Gregorian calendar.
    let year = if bc { 1 - year } else { year };
    chrono::NaiveDate::from_ymd_opt(year, month, day)
}

/// `HH:MM:SS[.ffffff]` to microseconds past midnight (`24:00:00` allowed).
fn time_micros(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let (s, frac) = split_seconds(parts.next()?)?;
    if h > 24 || m > 59 || s > 60 {
        return None;
    }
    Some(((h * 60 + m) * 60 + s) * 1_000_000 + frac)
}

/// Seconds with an optional fraction: (whole seconds, microseconds).
fn split_seconds(text: &str) -> Option<(i64, i64)> {
    let (s, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    Some((s.parse().ok()?, micros))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][ BC]` (read as UTC) to microseconds since the epoch.
fn timestamp_micros(text: &str) -> Option<i64> {
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) => (b, " BC"),
        None => (text, ""),
    };
    let (date, time) = body.split_once(' ')?;
    let days = days_since_epoch(&format!("{date}{bc}"))?;
    Some(days * 86_400_000_000 + time_micros(time)?)
}

/// Splits a trailing UTC offset (`+00`, `-05:30`, `+05:30:15`) from a time: (time, offset
/// seconds east of UTC).
fn split_offset(text: &str) -> Option<(&str, i64)> {
    let at = text.rfind(['+', '-'])?;
    let (time, offset) = text.split_at(at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut seconds = 0;
    for (i, part) in offset[1..].split(':').enumerate() {
        let v: i64 = part.parse().ok()?;
        seconds += v * [3600, 60, 1].get(i)?;
    }
    Some((time, sign * seconds))
}

/// Java's ISO-8601 fraction: as many digits as needed, none for a whole second.
fn fraction(micros: i64) -> String {
    if micros == 0 {
        return String::new();
    }
    let digits = format!("{micros:06}");
    format!(".{}", digits.trim_end_matches('0'))
}

fn zoned_timestamp(text: &str) -> Option<String> {
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) => (b, " BC"),
        None => (text, ""),
    };
    let (local, offset) = split_offset(body)?;
    let micros = timestamp_micros(&format!("{local}{bc}"))? - offset * 1_000_000;
    let secs = micros.div_euclid(1_000_000);
    let sub = micros.rem_euclid(1_000_000);
    let utc = chrono::DateTime::from_timestamp(secs, 0)?.naive_utc();
    Some(format!(
        "{}{}Z",
        utc.format("%Y-%m-%dT%H:%M:%S"),
        fraction(sub)
    ))
}

fn zoned_time(text: &str) -> Option<String> {
    let (local, offset) = split_offset(text)?;
    let micros = (time_micros(local)? - offset * 1_000_000).rem_euclid(86_400_000_000);
    let secs = micros / 1_000_000;
    Some(format!(
        "{:02}:{:02}:{:02}{}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        fraction(micros % 1_000_000)
    ))
}

/// An ISO-8601 interval as PostgreSQL prints it with `IntervalStyle=iso_8601`
/// (`P1Y2M3DT4H5M6.5S`, signs per field) to Debezium's approximate microseconds.
fn interval_micros(text: &str) -> Option<i64> {
    const DAYS_PER_MONTH: f64 = 365.25 / 12.0;
    let body = text.strip_prefix('P')?;
    let (date, time) = body.split_once('T').unwrap_or((body, ""));
    let mut months = 0f64;
    let mut days = 0f64;
    let mut micros = 0f64;
    let mut number = String::new();
    for c in date.chars() {
        match c {
            'Y' => months += number.parse::<f64>().ok()? * 12.0,
            'M' => months += number.parse::<f64>().ok()?,
            'W' => days += number.parse::<f64>().ok()? * 7.0,
            'D' => days += number.parse::<f64>().ok()?,
            _ => {
                number.push(c);
                continue;
            }
        }
        number.clear();
    }
    for c in time.chars() {
        match c {
            'H' => micros += number.parse::<f64>().ok()? * 3_600e6,
            'M' => micros += number.parse::<f64>().ok()? * 60e6,
            'S' => micros += number.parse::<f64>().ok()? * 1e6,
            _ => {
                number.push(c);
                continue;
            }
        }
        number.clear();
    }
    if !number.is_empty() {
        return None;
    }
    Some(((months * DAYS_PER_MONTH + days) * 86_400e6 + micros).round() as i64)
}

/// A parsed array literal: nested lists of optional element texts.
#[derive(Debug, PartialEq)]
enum ArrayItem {
    Null,
    Text(String),
    List(Vec<ArrayItem>),
}

/// Parses PostgreSQL's array output (`{1,2}`, `{{"a b",NULL},{c,"d\"e"}}`, with an
/// optional `[1:2]=` dimension prefix).
fn parse_array(text: &str) -> Option<Vec<ArrayItem>> {
    let text = match text.find("={") {
        Some(at) if text.starts_with('[') => &text[at + 1..],
        _ => text,
    };
    let mut chars = text.chars().peekable();
    let ArrayItem::List(items) = parse_list(&mut chars)? else {
        return None;
    };
    chars.next().is_none().then_some(items)
}

fn parse_list(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<ArrayItem> {
    if chars.next()? != '{' {
        return None;
    }
    let mut items = Vec::new();
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(ArrayItem::List(items));
    }
    loop {
        let item = match chars.peek()? {
            '{' => parse_list(chars)?,
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                ArrayItem::Text(s)
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                if s == "NULL" {
                    ArrayItem::Null
                } else {
                    ArrayItem::Text(s)
                }
            }
        };
        items.push(item);
        match chars.next()? {
            ',' => continue,
            '}' => return Some(ArrayItem::List(items)),
            _ => return None,
        }
    }
}

fn array_value(
    element: &ValueKind,
    items: &[ArrayItem],
    decimals: DecimalHandling,
) -> Result<Value, CdcError> {
    items
        .iter()
        .map(|item| match item {
            ArrayItem::Null => Ok(Value::Null),
            ArrayItem::Text(t) => convert(element, Some(t), decimals),
            ArrayItem::List(inner) => array_value(element, inner, decimals),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

#[cfg(test)]
mod tests;
