use super::*;

#[test]
fn positions_round_trip_through_their_text() {
    let p = Position {
        commit_lsn: 42,
        lsn: 40,
        index: 3,
        snapshot: false,
    };
    assert_eq!(p.to_text().parse::<Position>(), Ok(p));
    let s = Position {
        snapshot: true,
        ..p
    };
    assert_eq!(s.to_text().parse::<Position>(), Ok(s));
    assert!("1/2/3".parse::<Position>().is_err());
    assert!("1/2/3/x".parse::<Position>().is_err());
    assert!("1/2/3/c/9".parse::<Position>().is_err());
}

#[test]
fn key_values_as_text() {
    let key = Row(vec![
        ("a".into(), Value::from(1)),
        ("b".into(), Value::from("x")),
    ]);
    assert_eq!(key.values_text(":"), "1:x");
}
