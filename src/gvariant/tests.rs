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
        Type::Signature => prop::collection::vec(arb_type(), 0..3)
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
        if let Ok(v) = from_normal_bytes(&ty, &bytes) {
            prop_assert_eq!(to_bytes(&v), bytes);
        }
    }

    #[test]
    fn any_flipped_byte_is_caught_or_decodes_differently((ty, v) in arb_typed_value(), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bytes = to_bytes(&v);
        prop_assume!(!bytes.is_empty());
        let i = pos.index(bytes.len());
        bytes[i] ^= flip;
        // A flipped byte never decodes to the same value: it is either refused
        // or read as a different value.
        if let Ok(other) = from_normal_bytes(&ty, &bytes) {
            prop_assert_ne!(other, v);
        }
    }
}
