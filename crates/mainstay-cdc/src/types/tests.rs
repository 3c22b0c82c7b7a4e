use super::*;
use serde_json::json;

fn conv(oid: u32, typmod: i32, text: &str) -> Value {
    let kind = ValueKind::builtin(oid, typmod).expect("builtin");
    convert(&kind, Some(text), DecimalHandling::Precise).expect(text)
}

#[test]
fn timestamp_is_utc_microseconds_as_in_debeziums_docs() {
    // Debezium's documented example: "2018-06-20 15:13:16.945104" -> 1529507596945104.
    assert_eq!(
        conv(1114, -1, "2018-06-20 15:13:16.945104"),
        json!(1529507596945104i64)
    );
    assert_eq!(
        conv(1114, 3, "2018-06-20 15:13:16.945"),
        json!(1529507596945i64)
    );
    assert_eq!(conv(1114, -1, "infinity"), json!(9223372036825200000i64));
    assert_eq!(conv(1114, -1, "1969-12-31 23:59:59.5"), json!(-500000));
    assert_eq!(
        conv(1114, -1, "0001-01-01 00:00:00 BC"),
        json!(-62167219200000000i64)
    );
}

#[test]
fn dates_times_and_zoned_values() {
    assert_eq!(conv(1082, -1, "1970-01-02"), json!(1));
    assert_eq!(conv(1082, -1, "1969-12-31"), json!(-1));
    assert_eq!(conv(1083, -1, "01:00:00.25"), json!(3_600_250_000i64));
    assert_eq!(conv(1083, 2, "01:00:00.25"), json!(3_600_250));
    assert_eq!(conv(1083, -1, "24:00:00"), json!(86_400_000_000i64));
    assert_eq!(
        conv(1184, -1, "2018-06-20 13:37:03.120000+00"),
        json!("2018-06-20T13:37:03.12Z")
    );
    assert_eq!(
        conv(1184, -1, "2018-06-20 01:37:03+05:30"),
        json!("2018-06-19T20:07:03Z")
    );
    assert_eq!(conv(1266, -1, "13:37:03.5-01"), json!("14:37:03.5Z"));
    assert_eq!(conv(1266, -1, "00:30:00+01"), json!("23:30:00Z"));
}

#[test]
fn intervals_count_a_month_as_a_twelfth_of_365_25_days() {
    assert_eq!(conv(1186, -1, "PT1H"), json!(3_600_000_000i64));
    assert_eq!(conv(1186, -1, "P1D"), json!(86_400_000_000i64));
    assert_eq!(conv(1186, -1, "P1M"), json!(2_629_800_000_000i64));
    assert_eq!(conv(1186, -1, "P-1DT-0.5S"), json!(-86_400_500_000i64));
    assert_eq!(conv(1186, -1, "P0D"), json!(0));
}

#[test]
fn precise_decimals_are_twos_complement_unscaled_bytes() {
    // numeric(5,2): typmod = (5 << 16 | 2) + 4.
    let typmod = (5 << 16 | 2) + 4;
    // 1.00 -> unscaled 100 -> 0x64 -> "ZA==".
    assert_eq!(conv(1700, typmod, "1.00"), json!("ZA=="));
    // 99.99 -> 9999 -> 0x270F -> "Jw8=" (the value a Debezium user reports for 99.99).
    assert_eq!(conv(1700, typmod, "99.99"), json!("Jw8="));
    // -1.28 -> -128 -> 0x80 -> "gA=="; 1.28 -> 128 -> 0x0080 -> "AIA=".
    assert_eq!(conv(1700, typmod, "-1.28"), json!("gA=="));
    assert_eq!(conv(1700, typmod, "1.28"), json!("AIA="));
    assert_eq!(conv(1700, typmod, "-1.29"), json!("/38="));
    assert_eq!(conv(1700, typmod, "0.00"), json!("AA=="));
    // Unconstrained numeric: Debezium's VariableScaleDecimal.
    assert_eq!(conv(1700, -1, "12.5"), json!({"scale": 1, "value": "fQ=="}));
    assert_eq!(conv(1700, -1, "NaN"), Value::Null);
    let kind = ValueKind::builtin(1700, -1).unwrap();
    assert_eq!(
        convert(&kind, Some("12.50"), DecimalHandling::String).unwrap(),
        json!("12.50")
    );
    assert_eq!(
        convert(&kind, Some("12.50"), DecimalHandling::Double).unwrap(),
        json!(12.5)
    );
    // money is scale 2.
    assert_eq!(
        conv(790, -1, "-$1,234.56"),
        conv(1700, (10 << 16 | 2) + 4, "-1234.56")
    );
}

#[test]
fn scalars_bytes_and_arrays() {
    assert_eq!(conv(16, -1, "t"), json!(true));
    assert_eq!(conv(1560, 1, "1"), json!(true));
    assert_eq!(conv(21, -1, "-32768"), json!(-32768));
    assert_eq!(conv(20, -1, "9223372036854775807"), json!(i64::MAX));
    assert_eq!(conv(701, -1, "1.5"), json!(1.5));
    assert_eq!(conv(701, -1, "NaN"), json!("NaN"));
    assert_eq!(conv(17, -1, "\\x68656c6c6f"), json!("aGVsbG8="));
    assert_eq!(conv(3802, -1, "{\"a\": 1}"), json!("{\"a\": 1}"));
    assert_eq!(conv(1007, -1, "{1,NULL,3}"), json!([1, null, 3]));
    assert_eq!(conv(1007, -1, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
    assert_eq!(conv(1007, -1, "[0:1]={5,6}"), json!([5, 6]));
    assert_eq!(conv(1009, -1, "{}"), json!([]));
    assert_eq!(
        conv(1009, -1, r#"{"a b","c\"d",NULL,"NULL",plain}"#),
        json!(["a b", "c\"d", null, "NULL", "plain"])
    );
    assert_eq!(conv(1182, -1, "{1970-01-02}"), json!([1]));
}

#[test]
fn bad_text_is_an_error_naming_the_value_and_type() {
    let kind = ValueKind::builtin(23, -1).unwrap();
    let err = convert(&kind, Some("x1"), DecimalHandling::Precise).unwrap_err();
    assert!(
        err.to_string().contains("\"x1\"") && err.to_string().contains("integer"),
        "{err}"
    );
    let kind = ValueKind::builtin(1007, -1).unwrap();
    assert!(convert(&kind, Some("{1,2"), DecimalHandling::Precise).is_err());
}

#[test]
fn unchanged_toast_placeholders() {
    assert_eq!(unavailable(&ValueKind::Text), json!(UNAVAILABLE_VALUE));
    assert_eq!(
        unavailable(&ValueKind::Bytes),
        json!("X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==")
    );
    assert_eq!(
        unavailable(&ValueKind::Array(Box::new(ValueKind::Text))),
        json!([UNAVAILABLE_VALUE])
    );
}
