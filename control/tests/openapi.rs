//! The OpenAPI document against the real API: every route the router serves is documented
//! with its methods and nothing else is; every example request is accepted by the real
//! handler; every answer matches the schema documented for its status; every operation that
//! needs a token documents (and gives) 401 without one.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::BTreeSet;

use common::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(the_document_matches_the_router_and_the_handlers);

/// `/api/v1/nodes/{node_id}` and `/api/v1/nodes/{nodeId}` both become `/api/v1/nodes/{}`.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];

/// Every (method, path) the document lists, path as written.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').unwrap();
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling {reference}"));
            resolve(doc, target)
        }
        None => schema,
    }
}

fn type_matches(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown type {other}"),
    }
}

/// Checks `value` against the JSON Schema subset the document uses; returns every mismatch.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let fits = any.iter().any(|s| {
            let mut e = Vec::new();
            check(doc, s, value, at, &mut e);
            e.is_empty()
        });
        if !fits {
            errors.push(format!("{at}: {value} matches no anyOf branch"));
        }
        return;
    }
    if let Some(types) = schema.get("type") {
        let ok = if let Some(name) = types.as_str() {
            type_matches(value, name)
        } else {
            let names = types
                .as_array()
                .unwrap_or_else(|| panic!("bad type {types}"));
            names
                .iter()
                .any(|n| type_matches(value, n.as_str().unwrap()))
        };
        if !ok {
            errors.push(format!("{at}: {value} is not of type {types}"));
            return;
        }
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        errors.push(format!("{at}: {value} is not {constant}"));
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {options:?}"));
    }
    if let Some(n) = value.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|min| n < min)
        {
            errors.push(format!("{at}: {n} is below the minimum"));
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|max| n > max)
        {
            errors.push(format!("{at}: {n} is above the maximum"));
        }
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count();
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len as u64 > m)
        {
            errors.push(format!("{at}: too long"));
        }
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| (len as u64) < m)
        {
            errors.push(format!("{at}: too short"));
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if schema
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            errors.push(format!("{at}: too few items"));
        }
        if schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            errors.push(format!("{at}: too many items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(doc, item_schema, item, &format!("{at}[{i}]"), errors);
            }
        }
    }
    if let Some(fields) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !fields.contains_key(name.as_str().unwrap()) {
                errors.push(format!("{at}: missing {name}"));
            }
        }
        for (name, field) in fields {
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => {
                    check(doc, field_schema, field, &format!("{at}.{name}"), errors)
                }
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{at}: undocumented field {name}"));
                }
                None => {}
            }
        }
    }
}

fn assert_fits(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let mut errors = Vec::new();
    check(doc, schema, value, "$", &mut errors);
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{value:#}");
}

/// The schema the document gives for `status` of an operation's responses, if any.
fn response_schema<'a>(doc: &'a Value, op: &'a Value, status: u16) -> Option<&'a Value> {
    let response = resolve(doc, op["responses"].get(status.to_string())?);
    response["content"]["application/json"].get("schema")
}

fn needs_token(doc: &Value, op: &Value) -> bool {
    let security = op.get("security").unwrap_or(&doc["security"]);
    let options = security.as_array().unwrap();
    !options.is_empty() && !options.iter().any(|o| o.as_object().unwrap().is_empty())
}

async fn the_document_matches_the_router_and_the_handlers(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let (status, doc) = server.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    // Routes both ways.
    let served: BTreeSet<(String, String)> = boson_control::api_routes()
        .into_iter()
        .map(|(method, path)| (method.to_string(), normalize(path)))
        .collect();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path)| (method, normalize(&path)))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );

    // Every example validates against its own schema, and every 4xx/5xx is the Error shape.
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        if let Some(content) = op.pointer("/requestBody/content/application~1json") {
            assert_fits(
                &doc,
                &content["schema"],
                &content["example"],
                &format!("{method} {path} example"),
            );
        }
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || (status.starts_with('5') && path != "/health/ready") {
                let schema = &resolve(&doc, response)["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/Error",
                    "{method} {path} {status}"
                );
            }
        }
    }

    // The example registration is accepted, and a second node (the same example under
    // another id and key) gives routing something to rank.
    // Its key proof is made afresh, with a key pair the test holds (the example's public key
    // and proof are placeholders nobody can answer a challenge with).
    let register_op = &doc["paths"]["/api/v1/nodes/register"]["post"];
    let documented = register_op["requestBody"]["content"]["application/json"]["example"].clone();
    let node_id = documented["nodeId"].as_str().unwrap().to_owned();
    let holder = common::Node {
        id: node_id.parse().unwrap(),
        ..common::Node::new("US-CA")
    };
    let proved = |challenge: &common::Challenge| {
        let mut body = documented.clone();
        body["publicKey"] = json!(holder.key);
        body["keyProof"] =
            holder.registration_answering(challenge, server.clock_secs())["keyProof"].clone();
        body
    };
    let example = proved(&server.challenge().await);
    let (status, body) = server.post("/api/v1/nodes/register", None, &example).await;
    assert_eq!(status, 201, "{body}");
    assert_fits(
        &doc,
        response_schema(&doc, register_op, 201).unwrap(),
        &body,
        "register 201",
    );
    let token = body["sessionToken"].as_str().unwrap().to_owned();
    let mut peer = server.registration(&common::Node::new("US-CA")).await;
    peer["networkInfo"]["natType"] = json!("Symmetric");
    assert_eq!(
        server.post("/api/v1/nodes/register", None, &peer).await.0,
        201
    );
    // Registering the example again with its token: the documented 200.
    let again = proved(&server.challenge().await);
    let (status, body) = server
        .post("/api/v1/nodes/register", Some(&token), &again)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_fits(
        &doc,
        response_schema(&doc, register_op, 200).unwrap(),
        &body,
        "register 200",
    );
    let token = body["sessionToken"].as_str().unwrap().to_owned();

    // Every other operation, with its example body and parameter examples; deletion last.
    let mut ops = operations(&doc);
    ops.retain(|(method, path)| !(method == "POST" && path == "/api/v1/nodes/register"));
    ops.sort_by_key(|(method, _)| method == "DELETE");
    for (method, path) in ops {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let concrete = path.replace("{nodeId}", &node_id);
        let mut query = Vec::new();
        for param in op["parameters"].as_array().into_iter().flatten() {
            if param["in"] == "query"
                && let Some(example) = param.get("example")
            {
                let value = example
                    .as_str()
                    .map_or_else(|| example.to_string(), str::to_owned);
                query.push((param["name"].as_str().unwrap().to_owned(), value));
            }
        }
        let url = if query.is_empty() {
            server.url(&concrete)
        } else {
            let pairs: Vec<String> = query
                .iter()
                .map(|(name, value)| {
                    assert!(
                        value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
                        "{name} example needs no escaping: {value}"
                    );
                    format!("{name}={value}")
                })
                .collect();
            format!("{}?{}", server.url(&concrete), pairs.join("&"))
        };
        let body = op.pointer("/requestBody/content/application~1json/example");
        let send = |token: Option<&str>| {
            let mut request = server
                .http
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            request.send()
        };
        let what = format!("{method} {path}");

        if needs_token(&doc, op) {
            let response = send(None).await.unwrap();
            assert_eq!(response.status().as_u16(), 401, "{what} without a token");
            let answer: Value = response.json().await.unwrap();
            let schema = response_schema(&doc, op, 401)
                .unwrap_or_else(|| panic!("{what} does not document 401"));
            assert_fits(&doc, schema, &answer, &format!("{what} 401"));
        }

        let response = send(Some(&token)).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        assert!((200..300).contains(&status), "{what} -> {status} {text}");
        let documented = resolve(&doc, &op["responses"][status.to_string()]);
        let media = documented["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{what} does not document {status}"));
        let (media_type, content) = media.iter().next().unwrap();
        assert!(
            content_type.starts_with(media_type.as_str()),
            "{what}: {content_type} vs {media_type}"
        );
        if media_type == "application/json" {
            let answer: Value = serde_json::from_str(&text).unwrap();
            assert_fits(
                &doc,
                &content["schema"],
                &answer,
                &format!("{what} {status}"),
            );
            if path == "/api/v1/routing/request" {
                assert!(
                    !answer["routes"].as_array().unwrap().is_empty(),
                    "the example found no route: {answer}"
                );
            }
        }
    }
    server.stop().await;
}
