//! The API's OpenAPI 3.1 document: `docs/openapi.json`, compiled in and served at
//! `GET /openapi.json`. The tests here hold it to the route table ([`crate::route`]): every
//! route has an operation, every operation routes, and each one describes its parameters and
//! answers, so that the document cannot drift from what the gateway serves. Schemathesis
//! (`scripts/schemathesis`) holds the answers to it.

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// The HTTP methods an OpenAPI path item may hold (its other keys are not operations).
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every operation of the document: (method in capitals, path template, operation).
pub fn operations(doc: &serde_json::Value) -> Vec<(String, String, &serde_json::Value)> {
    let mut out = Vec::new();
    let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) else {
        return out;
    };
    for (path, item) in paths {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((m.to_ascii_uppercase(), path.clone(), op));
            }
        }
    }
    out
}

/// The path a template names with every `{parameter}` replaced by `x`.
pub fn sample_path(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        out.push('x');
        rest = rest[i..].split_once('}').map_or("", |(_, r)| r);
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
    }

    #[test]
    fn it_is_openapi_3_1_with_its_security_schemes() {
        let d = doc();
        assert_eq!(d["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
        let schemes = d["components"]["securitySchemes"].as_object().unwrap();
        assert!(schemes.len() >= 2, "bearer keys and the original's headers");
    }

    #[test]
    fn samples_fill_every_parameter() {
        assert_eq!(sample_path("/v1/msgs/{topic}/{ver}"), "/v1/msgs/x/x");
        assert_eq!(
            sample_path("/v1/dlq/{appid}/{group}/messages"),
            "/v1/dlq/x/x/messages"
        );
        assert_eq!(sample_path("/alive"), "/alive");
    }

    /// Each operation says what it is, names every parameter of its path, and lists its
    /// answers, among them its errors.
    #[test]
    fn every_operation_is_described() {
        let d = doc();
        let ops = operations(&d);
        assert!(!ops.is_empty());
        let mut ids = std::collections::HashSet::new();
        for (m, path, op) in ops {
            let at = format!("{m} {path}");
            for k in ["operationId", "summary", "description"] {
                assert!(
                    op[k].as_str().is_some_and(|s| !s.is_empty()),
                    "{at}: no {k}"
                );
            }
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "{at}: operationId twice"
            );
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{at}: no responses"));
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{at}: no success answer"
            );
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(
                    d["paths"][&path]["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten(),
                )
                .filter(|p| p["in"] == "path" || p["$ref"].is_string())
                .map(|p| {
                    p["name"].as_str().unwrap_or_else(|| {
                        // A reference to a shared parameter: #/components/parameters/<name>.
                        let r = p["$ref"].as_str().unwrap();
                        let name = r.rsplit('/').next().unwrap();
                        d["components"]["parameters"][name]["name"]
                            .as_str()
                            .unwrap_or("")
                    })
                })
                .collect();
            for seg in path.split('/') {
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    assert!(
                        params.contains(&name),
                        "{at}: path parameter {name} undeclared"
                    );
                }
            }
        }
    }
}
