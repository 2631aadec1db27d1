use proptest::prelude::*;

use super::*;

fn t(s: &str) -> Type {
    Type::parse(s).expect("valid type string")
}

#[test]
fn commitmeta_vector_from_ostree() {
    // `{"foo": <"bar">}` as ostree writes a detached-metadata object.
    let v = dict_to_value(&[("foo".to_string(), Value::str("bar"))]);
    let bytes = to_bytes(&v);
    assert_eq!(
        hex::encode(&bytes),
        "666f6f000000000062617200007304 0f".replace(' ', "")
    );
    let back = from_normal_bytes(&vardict_type(), &bytes).expect("normal");
    assert_eq!(back, v);
}

#[test]
fn variant_vector() {
    let v = Value::variant(Value::str("v"));
    assert_eq!(to_bytes(&v), [0x76, 0x00, 0x00, 0x73]);
    // The format page's `<'v'>` example is a variant holding the string "v".
}

#[test]
fn empty_values() {
    assert_eq!(to_bytes(&Value::Tuple(vec![])), [0]);
    assert_eq!(to_bytes(&Value::Array(Type::Str, vec![])), [] as [u8; 0]);
    assert_eq!(to_bytes(&Value::Maybe(Type::Str, None)), [] as [u8; 0]);
    assert_eq!(
        to_bytes(&Value::Maybe(Type::Str, Some(Box::new(Value::str("")))),),
        [0, 0]
    );
}

#[test]
fn rejects_bad_inputs() {
    let cases: &[(&str, &[u8], &str)] = &[
        ("b", &[2], "boolean byte is 2"),
        ("u", &[1, 2, 3], "must be 4 bytes"),
        ("s", b"abc", "no terminating NUL"),
        ("s", b"a\0b\0", "embedded NUL"),
        ("s", b"\xff\0", "not valid UTF-8"),
        ("s", b"", "empty"),
        ("o", b"/a//b\0", "object path"),
        ("g", b"a\0", "signature"),
        // (say): the string's end offset points past the body.
        ("(say)", b"ab\0\x09", "framing offset"),
        // as: last offset larger than the container.
        ("as", b"a\0\x09", "framing offset"),
        // as: offsets region not a whole number of offsets is impossible at width 1, so
        // point the last offset at the container end (zero elements).
        ("as", b"a\0\x03", "framing offset"),
        ("au", &[1, 2, 3, 4, 5], "must be 8 bytes"),
        ("v", b"\0zz", "variant has an invalid type string"),
        ("v", b"abc", "variant has an invalid type string"),
        ("(uy)", &[0, 0, 0, 0, 1], "must be 8 bytes"),
        // Nonzero padding between `y` and `u`.
        ("(yu)", &[1, 9, 0, 0, 5, 0, 0, 0], "not in normal form"),
        // The reader takes the offset width from the size, so a writer's
        // 2-byte offset in a 4-byte array is read as a 1-byte offset of 0.
        ("as", &[b'a', 0, 2, 0], "framing offset"),
        // Unused trailing byte after a fixed-size array element... as a maybe.
        ("ms", &[b'a', 0, 1], "not in normal form"),
    ];
    for (ty, bytes, want) in cases {
        let err = from_normal_bytes(&t(ty), bytes).expect_err(ty);
        assert!(err.to_string().contains(want), "{ty} {bytes:?}: {err}");
    }
}

#[test]
fn deep_variants_are_refused_not_overflowed() {
    // <<<...<y>...>>> nested beyond the depth limit.
    let mut v = Value::Byte(1);
    for _ in 0..MAX_DEPTH + 5 {
        v = Value::variant(v);
    }
    let bytes = to_bytes(&v);
    assert_eq!(
        from_normal_bytes(&Type::Variant, &bytes),
        Err(DecodeError::TooDeep)
    );
}

#[test]
fn many_cheap_values_of_a_wide_type_are_refused_quickly() {
    // <aa(ss...s)>: 20,000 empty inner arrays cost one offset byte each, but
    // each would copy a 400-member element type. Found in review.
    let inner = format!("({})", "s".repeat(400));
    let n = 20_000usize;
    let mut body = Vec::new();
    for _ in 0..n {
        // Each empty inner array ends where it starts: offsets all 0.
        body.extend_from_slice(&[0, 0]);
    }
    // Offsets are 2 bytes wide here (body > 255 bytes); fix them up: all zero.
    let mut bytes = body;
    bytes.push(0);
    bytes.extend_from_slice(format!("aa{inner}").as_bytes());
    let started = std::time::Instant::now();
    let result = from_normal_bytes(&Type::Variant, &bytes);
    assert_eq!(result, Err(DecodeError::TooExpensive));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // The same shape, honestly sized, decodes.
    let small = Value::variant(Value::Array(
        Type::parse("a(ss)").expect("type"),
        vec![Value::Array(Type::parse("(ss)").expect("type"), vec![]); 10],
    ));
    assert_eq!(
        from_normal_bytes(&Type::Variant, &to_bytes(&small)),
        Ok(small)
    );
}

#[test]
fn a_tighter_budget_refuses_what_would_take_far_more_memory_than_its_size() {
    // A million booleans in a variant: a megabyte that decodes into 48 MB
    // of values. The default budget takes it (ostree would); one value per
    // 2 bytes, for a summary, does not.
    let many = Value::variant(Value::Array(Type::Bool, vec![Value::Bool(true); 1_000_000]));
    let bytes = to_bytes(&many);
    assert_eq!(from_normal_bytes(&Type::Variant, &bytes), Ok(many));
    assert_eq!(
        from_normal_bytes_within(&Type::Variant, &bytes, bytes.len() / 2 + 1024),
        Err(DecodeError::TooExpensive)
    );
    // Strings of ref names, 10 bytes each, decode within it.
    let names = Value::Array(
        Type::Str,
        (0..100_000)
            .map(|i| Value::string(format!("ref/{i:05}")))
            .collect(),
    );
    let bytes = to_bytes(&names);
    assert!(bytes.len() > 1_000_000);
    assert_eq!(
        from_normal_bytes_within(
            &Type::Array(Box::new(Type::Str)),
            &bytes,
            bytes.len() / 2 + 1024
        ),
        Ok(names)
    );
}

#[test]
fn signatures_follow_glib() {
    // GLib's is_signature: no maybe types, no length limit.
    assert!(from_normal_bytes(&Type::Signature, b"(mi)\0").is_err());
    let long = format!("{}\0", "(i)".repeat(100));
    assert!(from_normal_bytes(&Type::Signature, long.as_bytes()).is_ok());
    assert!(from_normal_bytes(&Type::Signature, b"a{sv}as\0").is_ok());
}

#[test]
fn two_byte_offsets_at_the_top_with_one_byte_inside() {
    // A dirtree-shaped value large enough for 2-byte offsets at the top level,
    // while each (say) element stays small and uses 1-byte offsets.
    let elem = Type::parse("(say)").expect("valid");
    let items: Vec<Value<'_>> = (0..40)
        .map(|i| {
            Value::Tuple(vec![
                Value::string(format!("file{i:03}")),
                Value::bytes(&[7; 32]),
            ])
        })
        .collect();
    let v = Value::Tuple(vec![
        Value::Array(elem.clone(), items),
        Value::Array(Type::parse("(sayay)").expect("valid"), vec![]),
    ]);
    let bytes = to_bytes(&v);
    assert!(bytes.len() > 255);
    assert_eq!(from_normal_bytes(&v.type_of(), &bytes), Ok(v.clone()));
    // The first element's own framing offset is one byte: "file000" + NUL = 8.
    assert_eq!(bytes[8 + 32], 8);
}

fn arb_basic_type() -> impl Strategy<Value = Type> {
    prop_oneof![
        Just(Type::Bool),
        Just(Type::Byte),
        Just(Type::Int16),
        Just(Type::Uint16),
        Just(Type::Int32),
        Just(Type::Uint32),
        Just(Type::Int64),
        Just(Type::Uint64),
        Just(Type::Double),
        Just(Type::Str),
        Just(Type::ObjectPath),
        Just(Type::Signature),
    ]
}

fn arb_type() -> impl Strategy<Value = Type> {
    let leaf = prop_oneof![arb_basic_type(), Just(Type::Variant)];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| Type::Array(Box::new(t))),
            inner.clone().prop_map(|t| Type::Maybe(Box::new(t))),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Type::Tuple),
            (arb_basic_type(), inner).prop_map(|(k, v)| Type::DictEntry(Box::new(k), Box::new(v))),
        ]
    })
}

fn arb_value(ty: Type, depth: u32) -> BoxedStrategy<Value<'static>> {
    match ty {
        Type::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Type::Byte => any::<u8>().prop_map(Value::Byte).boxed(),
        Type::Int16 => any::<i16>().prop_map(Value::Int16).boxed(),
        Type::Uint16 => any::<u16>().prop_map(Value::Uint16).boxed(),
        Type::Int32 => any::<i32>().prop_map(Value::Int32).boxed(),
        Type::Handle => any::<i32>().prop_map(Value::Handle).boxed(),
        Type::Uint32 => any::<u32>().prop_map(Value::Uint32).boxed(),
        Type::Int64 => any::<i64>().prop_map(Value::Int64).boxed(),
        Type::Uint64 => any::<u64>().prop_map(Value::Uint64).boxed(),
        Type::Double => (-1e9f64..1e9).prop_map(Value::Double).boxed(),
        Type::Str => "[^\u{0}]{0,12}".prop_map(Value::string).boxed(),
        Type::ObjectPath => prop_oneof![
            Just("/".to_string()),
            "(/[a-z_0-9]{1,5}){1,3}".prop_map(|s| s)
        ]
        .prop_map(|s| Value::ObjectPath(s.into()))
        .boxed(),
        Type::Signature => prop::collection::vec(
            arb_type().prop_filter("GLib signatures have no maybe types", |t| {
                !t.to_string().contains('m')
            }),
            0..3,
        )
        .prop_map(|ts| {
            Value::Signature(
                ts.iter()
                    .map(ToString::to_string)
                    .collect::<String>()
                    .into(),
            )
        })
        .boxed(),
        Type::Variant => {
            if depth > 3 {
                any::<u32>()
                    .prop_map(|u| Value::variant(Value::Uint32(u)))
                    .boxed()
            } else {
                arb_type()
                    .prop_flat_map(move |inner| arb_value(inner, depth + 1))
                    .prop_map(Value::variant)
                    .boxed()
            }
        }
        Type::Maybe(inner) => {
            let elem = (*inner).clone();
            prop::option::of(arb_value(*inner, depth + 1))
                .prop_map(move |v| Value::Maybe(elem.clone(), v.map(Box::new)))
                .boxed()
        }
        Type::Array(inner) if *inner == Type::Byte => prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| Value::Bytes(b.into()))
            .boxed(),
        Type::Array(inner) => {
            let elem = (*inner).clone();
            prop::collection::vec(arb_value(*inner, depth + 1), 0..5)
                .prop_map(move |items| Value::Array(elem.clone(), items))
                .boxed()
        }
        Type::Tuple(members) => members
            .into_iter()
            .map(|m| arb_value(m, depth + 1))
            .collect::<Vec<_>>()
            .prop_map(Value::Tuple)
            .boxed(),
        Type::DictEntry(k, v) => (arb_value(*k, depth + 1), arb_value(*v, depth + 1))
            .prop_map(|(k, v)| Value::DictEntry(Box::new(k), Box::new(v)))
            .boxed(),
    }
}

fn arb_typed_value() -> impl Strategy<Value = (Type, Value<'static>)> {
    arb_type().prop_flat_map(|ty| {
        let t2 = ty.clone();
        arb_value(ty, 0).prop_map(move |v| (t2.clone(), v))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_round_trips((ty, v) in arb_typed_value()) {
        prop_assert_eq!(v.type_of(), ty.clone());
        let bytes = to_bytes(&v);
        if let Some(size) = ty.fixed_size() {
            prop_assert_eq!(bytes.len(), size);
        }
        let back = from_normal_bytes(&ty, &bytes);
        prop_assert_eq!(back, Ok(v));
    }

    #[test]
    fn type_strings_round_trip(ty in arb_type()) {
        prop_assert_eq!(Type::parse(&ty.to_string()), Ok(ty));
    }

    #[test]
    fn arbitrary_bytes_never_panic(ty in arb_type(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        // Whether they decode is for the GLib oracle below to judge; here
        // only that decoding returns at all.
        let _ = from_normal_bytes(&ty, &bytes);
    }
}

/// GLib itself decides: for thousands of random values, some mutated, depot
/// must agree with `g_variant_is_normal_form`. GLib's verdict is trusted only
/// where GLib is consistent with itself (its normal-form serialisation of the
/// value equals the input); where it is not, depot keeps to the byte-equality
/// definition.
#[test]
fn normal_form_agrees_with_glib() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::fmt::Write as _;

    let mut runner = TestRunner::deterministic();
    let mut cases: Vec<(Type, Vec<u8>)> = Vec::new();
    let strategy = arb_typed_value();
    for i in 0..3000 {
        let (ty, v) = strategy.new_tree(&mut runner).expect("tree").current();
        let mut bytes = to_bytes(&v);
        cases.push((ty.clone(), bytes.clone()));
        if !bytes.is_empty() {
            let pos = i * 7919 % bytes.len();
            match i % 4 {
                0 => bytes[pos] ^= 1 << (i % 8),
                1 => bytes.truncate(pos),
                2 => bytes.insert(pos, 0),
                _ => {
                    let last = bytes.len() - 1;
                    bytes[last] = bytes[last].wrapping_add(1);
                }
            }
            cases.push((ty, bytes));
        }
    }
    // Around the 1-, 2- and 4-byte offset boundaries.
    for n in [
        60usize, 63, 64, 65, 85, 86, 250, 16_000, 16_383, 16_384, 21_800,
    ] {
        let strings: Vec<Value<'_>> = (0..n)
            .map(|i| Value::string(format!("{}", i % 10)))
            .collect();
        let v = Value::Array(Type::Str, strings);
        let bytes = to_bytes(&v);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        cases.push((v.type_of(), bytes));
        cases.push((v.type_of(), flipped));
    }
    // Signatures and object paths: strings from their alphabets, valid or not.
    let alphabet = b"ybnqiuxthdvasog(){}m";
    for i in 0..600usize {
        let len = i % 9;
        let sig: Vec<u8> = (0..len)
            .map(|j| alphabet[(i * 31 + j * 17) % alphabet.len()])
            .collect();
        let mut bytes = sig.clone();
        bytes.push(0);
        cases.push((Type::Signature, bytes));
        let path: Vec<u8> = (0..len).map(|j| b"/a_9/"[(i + j * 3) % 5]).collect();
        let mut bytes = path;
        bytes.push(0);
        cases.push((Type::ObjectPath, bytes));
    }
    for t in ["(mi)", "ms", "a{sv}", "(i)(s)", "v", "()"] {
        cases.push((Type::Signature, format!("{t}\0").into_bytes()));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut input = String::new();
    for (ty, bytes) in &cases {
        let _ = writeln!(input, "{ty}\t{}", hex::encode(bytes));
    }
    std::fs::write(dir.path().join("cases.txt"), input).expect("write cases");
    let script = r#"
import sys
from gi.repository import GLib
for line in open(sys.argv[1]):
    t, h = line.rstrip("\n").split("\t")
    data = bytes.fromhex(h)
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(t), GLib.Bytes.new(data), False)
    normal = v.is_normal_form()
    consistent = bytes(v.get_normal_form().get_data_as_bytes().get_data() or b"") == data
    print(int(normal), int(consistent))
"#;
    std::fs::write(dir.path().join("oracle.py"), script).expect("write script");
    // python3-gi is installed for Debian's own Python.
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(dir.path().join("oracle.py"))
        .arg(dir.path().join("cases.txt"))
        .output()
        .expect("run /usr/bin/python3 (scripts/test.sh installs python3-gi)");
    assert!(
        out.status.success(),
        "GLib oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts = String::from_utf8(out.stdout).expect("utf8");
    let mut compared = 0;
    let mut accepted = 0;
    for ((ty, bytes), line) in cases.iter().zip(verdicts.lines()) {
        let (glib_normal, glib_consistent) = match line {
            "1 1" => (true, true),
            "0 0" | "0 1" => (false, true),
            _ => (true, false),
        };
        let ours = from_normal_bytes(ty, bytes).is_ok();
        if glib_consistent {
            assert_eq!(
                ours,
                glib_normal,
                "type {ty}, bytes {}: depot {ours}, GLib {glib_normal}",
                hex::encode(bytes)
            );
            compared += 1;
            accepted += usize::from(ours);
        } else {
            assert!(
                !ours,
                "type {ty}, bytes {}: GLib's own serialisation differs, depot must refuse",
                hex::encode(bytes)
            );
        }
    }
    assert_eq!(verdicts.lines().count(), cases.len());
    assert!(
        compared > 5000 && accepted > 2500,
        "compared {compared}, accepted {accepted}"
    );
}
