//! Building, framing and verifying protocol buffers; malformed input becomes
//! typed errors.

use flatbuffers::FlatBufferBuilder;
use keel_wire::fb;
use keel_wire::frame::{FrameDecoder, encode_frame};
use keel_wire::verify;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// An item `{"id": S(id), "n": N("42"), "nested": L[L[…depth…]]}`.
fn item_bytes(id: &str, depth: usize) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let mut nested = {
        let s = b.create_string("leaf");
        let s = fb::S::create(&mut b, &fb::SArgs { value: Some(s) });
        fb::AttributeValue::create(
            &mut b,
            &fb::AttributeValueArgs { value_type: fb::Value::S, value: Some(s.as_union_value()) },
        )
    };
    for _ in 0..depth {
        let values = b.create_vector(&[nested]);
        let l = fb::L::create(&mut b, &fb::LArgs { values: Some(values) });
        nested = fb::AttributeValue::create(
            &mut b,
            &fb::AttributeValueArgs { value_type: fb::Value::L, value: Some(l.as_union_value()) },
        );
    }
    let id_value = {
        let s = b.create_string(id);
        let s = fb::S::create(&mut b, &fb::SArgs { value: Some(s) });
        fb::AttributeValue::create(
            &mut b,
            &fb::AttributeValueArgs { value_type: fb::Value::S, value: Some(s.as_union_value()) },
        )
    };
    let n_value = {
        let s = b.create_string("42");
        let n = fb::N::create(&mut b, &fb::NArgs { value: Some(s) });
        fb::AttributeValue::create(
            &mut b,
            &fb::AttributeValueArgs { value_type: fb::Value::N, value: Some(n.as_union_value()) },
        )
    };
    let mut attributes = Vec::new();
    for (name, value) in [("id", id_value), ("n", n_value), ("nested", nested)] {
        let name = b.create_string(name);
        attributes.push(fb::Attribute::create(&mut b, &fb::AttributeArgs { name: Some(name), value: Some(value) }));
    }
    let attributes = b.create_vector(&attributes);
    let item = fb::Item::create(&mut b, &fb::ItemArgs { attributes: Some(attributes) });
    b.finish(item, None);
    b.finished_data().to_vec()
}

fn put_request(request_id: u64, item: &[u8]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let bytes = b.create_vector(item);
    let item = fb::ItemBytes::create(&mut b, &fb::ItemBytesArgs { bytes: Some(bytes) });
    let table = b.create_string("users");
    let condition = b.create_string("attribute_not_exists(id)");
    let put = fb::PutItemRequest::create(
        &mut b,
        &fb::PutItemRequestArgs {
            table_name: Some(table),
            item: Some(item),
            condition_expression: Some(condition),
            ..Default::default()
        },
    );
    let envelope = fb::RequestEnvelope::create(
        &mut b,
        &fb::RequestEnvelopeArgs {
            request_id,
            timeout_ms: 0,
            body_type: fb::Request::PutItemRequest,
            body: Some(put.as_union_value()),
        },
    );
    fb::finish_request_envelope_buffer(&mut b, envelope);
    b.finished_data().to_vec()
}

#[test]
fn a_framed_put_request_verifies_and_its_item_is_usable_in_place() {
    let item = item_bytes("u1", 3);
    let mut stream = Vec::new();
    encode_frame(&put_request(7, &item), &mut stream);
    let span = FrameDecoder::default().decode(&stream).expect("valid frame").expect("complete");
    let body = stream.get(span.body_start..span.end).expect("span in buffer");
    let request = verify::request(body).expect("verifies");
    assert_eq!(request.request_id(), 7);
    let put = request.body_as_put_item_request().expect("a PutItem");
    assert_eq!(put.table_name(), "users");
    assert_eq!(put.condition_expression(), Some("attribute_not_exists(id)"));
    let carried = put.item().bytes().bytes();
    assert_eq!(carried, item.as_slice(), "the item bytes arrive unchanged (zero-copy path)");
    let parsed = verify::item(carried).expect("item verifies");
    let id = parsed.attributes().iter().find(|a| a.name() == "id").expect("id attribute");
    assert_eq!(id.value().value_as_s().map(|s| s.value()), Some("u1"));
}

#[test]
fn items_nested_deeper_than_dynamodb_allows_are_rejected() {
    assert!(verify::item(&item_bytes("ok", 30)).is_ok(), "30 levels are allowed");
    let too_deep = item_bytes("deep", 60);
    let err = verify::item(&too_deep).expect_err("60 levels exceed the depth limit");
    assert_eq!(err.what, "item");
}

/// Keel builds flatbuffers with a patched verifier that records an error's
/// path only once verification has failed (vendor/README.md). The path must
/// still be there, innermost first, down to the field that broke.
#[test]
fn a_rejected_item_names_the_path_to_the_field_that_broke() {
    let mut item = item_bytes("broken-utf8-here", 0);
    let at = item.windows(16).position(|w| w == b"broken-utf8-here").expect("the id's bytes are in the buffer");
    *item.get_mut(at).expect("in the buffer") = 0xff;
    let err = verify::item(&item).expect_err("a string that is not UTF-8 is rejected");
    let flatbuffers::InvalidFlatbuffer::Utf8Error { error_trace, .. } = &err.source else {
        panic!("expected a UTF-8 error, got {:?}", err.source);
    };
    let path: Vec<String> = error_trace
        .as_ref()
        .iter()
        .map(|step| match step {
            flatbuffers::ErrorTraceDetail::TableField { field_name, .. } => format!("field {field_name}"),
            flatbuffers::ErrorTraceDetail::VectorElement { index, .. } => format!("element {index}"),
            flatbuffers::ErrorTraceDetail::UnionVariant { variant, .. } => format!("variant {variant}"),
        })
        .collect();
    assert_eq!(
        path,
        ["field value", "variant Value::S", "field value", "field value", "element 0", "field attributes"],
        "the trace, innermost first: S.value, the union's S, AttributeValue.value, Attribute.value, \
         the first attribute, Item.attributes"
    );
    let message = err.to_string();
    assert!(message.contains("while verifying table field `attributes`"), "{message}");
    assert!(message.contains("while verifying vector element 0"), "{message}");
}

#[test]
fn an_item_cut_short_at_any_length_is_rejected() {
    // Every read the verifier makes near the end of the buffer (an offset,
    // a vtable entry, a string's terminator) must find the buffer too short.
    // Only the builder's padding after the last string's terminator (less
    // than the 4-byte alignment) may go.
    let whole = item_bytes("x", 2);
    let verifies = |len: usize| verify::item(whole.get(..len).expect("a prefix")).is_ok();
    let shortest = (0..=whole.len()).find(|&len| verifies(len)).expect("the whole item verifies");
    assert!(shortest + 3 >= whole.len(), "{shortest} of {} bytes verified", whole.len());
    assert!((shortest..=whole.len()).all(verifies));
}

#[test]
fn garbage_and_bit_flips_never_panic() {
    let mut rng = SmallRng::seed_from_u64(5);
    let valid = put_request(1, &item_bytes("x", 2));
    let mut rejected = 0;
    for _ in 0..20_000 {
        let mut buf = valid.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..buf.len());
            if let Some(byte) = buf.get_mut(at) {
                *byte = rng.random();
            }
        }
        match verify::request(&buf) {
            Ok(request) => {
                // Whatever verifies must be fully readable without panics.
                if let Some(put) = request.body_as_put_item_request() {
                    let _ = verify::item(put.item().bytes().bytes());
                    let _ = put.table_name().len();
                }
            }
            Err(_) => rejected += 1,
        }
    }
    assert!(rejected > 1000, "corrupted buffers should mostly be rejected, got {rejected}");
    let random: Vec<u8> = (0..512).map(|_| rng.random()).collect();
    assert!(verify::request(&random).is_err());
    assert!(verify::response(&[]).is_err());
}

#[test]
fn an_envelope_id_is_rewritten_in_place_and_nothing_else_changes() {
    use keel_wire::protocol::{self, ErrorCode, Reply, Request, Response};
    let request = Request::DescribeTable { table: "music".into() };
    let mut body = protocol::encode_request(41, 250, &request);
    assert_eq!(protocol::envelope_id(&body), Some(41));
    assert!(protocol::set_envelope_id(&mut body, 0xfeed_0000_0001));
    assert_eq!(protocol::envelope_id(&body), Some(0xfeed_0000_0001));
    // A routing message keeps its id first too.
    let routing = keel_wire::routing::encode(77, &keel_wire::routing::Body::Status);
    assert_eq!(protocol::envelope_id(&routing), Some(77));
    let envelope = protocol::decode_request(&body).expect("still a valid request");
    assert_eq!((envelope.request_id, envelope.timeout_ms, envelope.request), (0xfeed_0000_0001, 250, request));

    let error = Response::Error { code: ErrorCode::NotLeader, message: "no".into(), leader_hint: Some("h:1".into()) };
    let mut body = protocol::encode_response(7, &error);
    assert_eq!(protocol::response_error(&body).expect("valid"), Some((ErrorCode::NotLeader, Some("h:1".into()))));
    assert!(protocol::set_envelope_id(&mut body, 0));
    let (id, reply) = protocol::decode_response(&body).expect("still a valid response");
    assert_eq!(id, 0);
    assert!(matches!(reply, Reply::Error { code: ErrorCode::NotLeader, .. }));

    // Id 0 is not written at all: there is nothing to rewrite.
    let mut body = protocol::encode_request(0, 0, &Request::ClusterStatus);
    assert!(!protocol::set_envelope_id(&mut body, 5));
    let ok = protocol::encode_response(3, &Response::BatchWrite);
    assert_eq!(protocol::response_error(&ok).expect("valid"), None);
}

#[test]
fn rewriting_the_id_of_garbage_never_panics() {
    for len in 0..64usize {
        let mut bytes: Vec<u8> = (0..len).map(|i| u8::try_from(i * 37 % 251).unwrap_or(0)).collect();
        let _ = keel_wire::protocol::set_envelope_id(&mut bytes, 9);
        let _ = keel_wire::protocol::envelope_id(&bytes);
        let mut ones = vec![0xff; len];
        let _ = keel_wire::protocol::set_envelope_id(&mut ones, 9);
    }
}

#[test]
fn responses_encoded_one_after_another_on_one_thread_each_carry_only_their_own_bytes() {
    use keel_wire::item::{self, AttributeValue, Item};
    use keel_wire::protocol::{self, ItemOp, Reply, Response};
    let item_of = |bytes: usize| -> Vec<u8> {
        let mut item = Item::new();
        item.insert("pk".into(), AttributeValue::S("user1".into()));
        item.insert("field0".into(), AttributeValue::S("x".repeat(bytes)));
        item::encode(&item)
    };
    // Small, then larger than the thread's builder keeps (so it is
    // replaced), then small again, then none: each decodes to what was
    // encoded, with nothing left over from the one before.
    for (id, bytes) in [(1u64, Some(100usize)), (2, Some(200_000)), (3, Some(10)), (4, None), (5, Some(1_000))] {
        let stored = bytes.map(item_of);
        let body = protocol::encode_response(id, &Response::Item(ItemOp::Get, stored.as_deref()));
        let (got_id, reply) = protocol::decode_response(&body).expect("valid response");
        assert_eq!(got_id, id);
        assert!(matches!(&reply, Reply::Item(got) if *got == stored), "response {id}: {reply:?}");
        // A request encoded between them (with the same builder) too.
        let request = protocol::Request::DescribeTable { table: format!("table{id}") };
        let request_body = protocol::encode_request(id, 9, &request);
        let envelope = protocol::decode_request(&request_body).expect("valid request");
        assert_eq!((envelope.request_id, envelope.request), (id, request));
        // Encoding the same response again gives the same bytes.
        let error = Response::Error { code: protocol::ErrorCode::NotLeader, message: "m".into(), leader_hint: None };
        let first = protocol::encode_response(id, &error);
        assert_eq!(protocol::encode_response(id, &error), first);
    }
}
