//! The inference request and response bodies, in the KServe v2 / Triton
//! HTTP JSON layout. Pure code (no HTTP, no async), so the fuzz target
//! can drive [`decode`] with arbitrary bytes.
//!
//! A request names one input tensor:
//!
//! ```json
//! {"id": "r1", "inputs": [{"name": "input", "shape": [2, 1, 28, 28],
//!   "datatype": "FP32", "data": [0.1, ...]}], "parameters": {"top_k": 3}}
//! ```
//!
//! `FP32` data is the model's input as is (already normalised); `UINT8`
//! is raw pixels, normalised with the run's statistics as `gpurt train`
//! did; `BYTES` is one base64 PNG per example for an image model (decoded,
//! converted and resized like `gpurt predict`) or one string per example
//! for a text model. `data` may be flat or nested; its element count must
//! equal the shape's product. Every error names the field at fault.

use crate::data::Normalizer;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use std::path::Path;

/// Deepest nesting of `data` arrays accepted (a 4-d tensor needs 4).
const MAX_DEPTH: usize = 8;
/// Most classes a response may list per example.
pub const MAX_TOP_K: usize = 1000;

/// What one served model accepts.
#[derive(Clone, Debug)]
pub enum InputSpec {
    /// `[channels, height, width]` images.
    Image {
        dims: [usize; 3],
        normalizer: Normalizer,
    },
    /// Documents, tokenised by the server (up to `max_len` tokens each).
    Text { max_len: usize },
}

impl InputSpec {
    /// The input tensor's name in requests and metadata.
    pub fn name(&self) -> &'static str {
        match self {
            InputSpec::Image { .. } => "input",
            InputSpec::Text { .. } => "text",
        }
    }

    /// Values per example of a numeric input.
    fn row_len(&self) -> usize {
        match self {
            InputSpec::Image { dims, .. } => dims.iter().product(),
            InputSpec::Text { .. } => 1,
        }
    }
}

/// Decoded examples, ready for a predictor.
#[derive(Clone, Debug, PartialEq)]
pub enum Rows {
    /// `n × row_len` values, already normalised (FP32).
    Values(Vec<f32>),
    /// `n × row_len` raw pixels (UINT8, PNG), normalised by the worker.
    Pixels(Vec<u8>),
    Texts(Vec<String>),
}

/// A decoded `infer` request.
#[derive(Clone, Debug, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub rows: Rows,
    /// Examples in the request.
    pub n: usize,
    /// Classes listed per example in the response.
    pub top_k: usize,
}

/// Why a request was refused: an HTTP status and a one-line message
/// naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    pub field: String,
    pub message: String,
}

impl RequestError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            status: 400,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The JSON body sent back: `{"error": "...", "field": "..."}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": format!("{}: {}", self.field, self.message), "field": self.field })
            .to_string()
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.field, self.message)
    }
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    id: Option<String>,
    #[serde(borrow)]
    inputs: Vec<RawInput<'a>>,
    #[serde(default)]
    parameters: Option<RawParameters>,
}

#[derive(Deserialize)]
struct RawParameters {
    top_k: Option<u64>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    /// Read by [`read_data`] once the rest of the request is checked.
    #[serde(borrow)]
    data: &'a RawValue,
}

/// `data`, flattened: numbers or strings, never both. An array of
/// numbers takes [`super::numbers::flat_numbers`]; everything else
/// (strings, and whatever is refused) the serde path below.
fn read_data(raw: &RawValue, expect: usize) -> Result<Flat, RequestError> {
    match super::numbers::flat_numbers(raw.get(), MAX_DEPTH, expect) {
        Some(v) => Ok(Flat::Numbers(v)),
        None => serde_json::from_str(raw.get())
            .map_err(|e| RequestError::bad("inputs[0].data", e.to_string())),
    }
}

/// `data`, flattened while parsing: numbers or strings, never both.
enum Flat {
    Numbers(Vec<f64>),
    Strings(Vec<String>),
}

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut acc = Accumulator::default();
        d.deserialize_seq(FlatVisitor {
            acc: &mut acc,
            depth: 1,
        })?;
        Ok(if acc.strings.is_empty() {
            Flat::Numbers(acc.numbers)
        } else {
            Flat::Strings(acc.strings)
        })
    }
}

#[derive(Default)]
struct Accumulator {
    numbers: Vec<f64>,
    strings: Vec<String>,
}

struct FlatVisitor<'a> {
    acc: &'a mut Accumulator,
    depth: usize,
}

/// One element of `data`: a number, a string, or a nested array.
struct Element<'a> {
    acc: &'a mut Accumulator,
    depth: usize,
}

impl<'de> Visitor<'de> for FlatVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers or strings (nested arrays allowed)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(format!(
                "data nested deeper than {MAX_DEPTH} arrays"
            )));
        }
        while seq
            .next_element_seed(ElementSeed {
                acc: &mut *self.acc,
                depth: self.depth,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct ElementSeed<'a> {
    acc: &'a mut Accumulator,
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Element {
            acc: self.acc,
            depth: self.depth,
        })
    }
}

impl Element<'_> {
    fn number<E: de::Error>(self, v: f64) -> Result<(), E> {
        if !self.acc.strings.is_empty() {
            return Err(E::custom("data mixes strings and numbers"));
        }
        self.acc.numbers.push(v);
        Ok(())
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, a string or an array")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if !self.acc.numbers.is_empty() {
            return Err(E::custom("data mixes strings and numbers"));
        }
        self.acc.strings.push(v.to_owned());
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        FlatVisitor {
            acc: self.acc,
            depth: self.depth + 1,
        }
        .visit_seq(seq)
    }
}

/// Decode and check one request body for a model taking `spec`, refusing
/// more than `max_rows` examples.
pub fn decode(
    body: &[u8],
    spec: &InputSpec,
    max_rows: usize,
) -> Result<InferRequest, RequestError> {
    let raw: RawRequest = serde_json::from_slice(body)
        .map_err(|e| RequestError::bad("body", format!("invalid request JSON: {e}")))?;
    let top_k = match raw.parameters.and_then(|p| p.top_k) {
        None => 3,
        Some(k) if (1..=MAX_TOP_K as u64).contains(&k) => k as usize,
        Some(k) => {
            return Err(RequestError::bad(
                "parameters.top_k",
                format!("{k} is not in 1..={MAX_TOP_K}"),
            ))
        }
    };
    let [input]: [RawInput<'_>; 1] = raw.inputs.try_into().map_err(|v: Vec<RawInput>| {
        RequestError::bad(
            "inputs",
            format!("expected 1 input tensor, got {}", v.len()),
        )
    })?;
    if input.name != spec.name() {
        return Err(RequestError::bad(
            "inputs[0].name",
            format!(
                "the model's input is '{}', not '{}'",
                spec.name(),
                input.name
            ),
        ));
    }
    let accepted: &[&str] = match spec {
        InputSpec::Image { .. } => &["FP32", "UINT8", "BYTES"],
        InputSpec::Text { .. } => &["BYTES"],
    };
    if !accepted.contains(&input.datatype.as_str()) {
        let accepted = match spec {
            InputSpec::Image { .. } => "FP32, UINT8 or BYTES (base64 PNG)",
            InputSpec::Text { .. } => "BYTES (strings)",
        };
        return Err(RequestError::bad(
            "inputs[0].datatype",
            format!(
                "'{}' is not accepted; this model takes {accepted}",
                input.datatype
            ),
        ));
    }
    let n = check_shape(&input, spec, max_rows)?;
    let rows = match (
        spec,
        input.datatype.as_str(),
        read_data(input.data, n.saturating_mul(spec.row_len()))?,
    ) {
        (InputSpec::Image { .. }, "FP32", Flat::Numbers(v)) => {
            check_count(&v, n * spec.row_len())?;
            let mut out = Vec::with_capacity(v.len());
            for (i, &x) in v.iter().enumerate() {
                let f = x as f32;
                if !f.is_finite() {
                    return Err(RequestError::bad(
                        format!("inputs[0].data[{i}]"),
                        format!("{x} is not a finite FP32 value"),
                    ));
                }
                out.push(f);
            }
            Rows::Values(out)
        }
        (InputSpec::Image { .. }, "UINT8", Flat::Numbers(v)) => {
            check_count(&v, n * spec.row_len())?;
            let mut px = Vec::with_capacity(v.len());
            for (i, &x) in v.iter().enumerate() {
                if !(0.0..=255.0).contains(&x) || x.fract() != 0.0 {
                    return Err(RequestError::bad(
                        format!("inputs[0].data[{i}]"),
                        format!("{x} is not a UINT8 value (0..=255)"),
                    ));
                }
                px.push(x as u8);
            }
            Rows::Pixels(px)
        }
        (InputSpec::Image { dims, .. }, "BYTES", Flat::Strings(v)) => {
            check_count(&v, n)?;
            let mut px = Vec::with_capacity(n * spec.row_len());
            for (i, s) in v.iter().enumerate() {
                let field = format!("inputs[0].data[{i}]");
                px.extend(png_pixels(&field, s, dims)?);
            }
            Rows::Pixels(px)
        }
        (InputSpec::Text { .. }, "BYTES", Flat::Strings(v)) => {
            check_count(&v, n)?;
            Rows::Texts(v)
        }
        (_, dt, data) => {
            let got = match data {
                Flat::Numbers(v) if v.is_empty() => "an empty array",
                Flat::Numbers(_) => "numbers",
                Flat::Strings(_) => "strings",
            };
            let want = if dt == "BYTES" {
                match spec {
                    InputSpec::Image { .. } => "base64 PNG strings",
                    InputSpec::Text { .. } => "strings",
                }
            } else {
                "numbers"
            };
            return Err(RequestError::bad(
                "inputs[0].data",
                format!("{dt} data must be {want}, got {got}"),
            ));
        }
    };
    Ok(InferRequest {
        id: raw.id,
        rows,
        n,
        top_k,
    })
}

/// The shape must be `[n, ...the model's input]` (`[n]` for strings), with
/// `1 <= n <= max_rows`. Returns n.
fn check_shape(
    input: &RawInput<'_>,
    spec: &InputSpec,
    max_rows: usize,
) -> Result<usize, RequestError> {
    let want: &[usize] = match (spec, input.datatype.as_str()) {
        (InputSpec::Image { dims, .. }, "FP32" | "UINT8") => dims,
        _ => &[],
    };
    let fits = input.shape.len() == want.len() + 1
        && input.shape[1..]
            .iter()
            .zip(want)
            .all(|(&s, &d)| s == d as u64);
    if !fits {
        // Formatted only here: a request that fits pays for no message.
        let show = |d: &[u64]| {
            let v: Vec<String> = d.iter().map(u64::to_string).collect();
            format!("[{}]", v.join(", "))
        };
        let expected: String = want.iter().map(|d| format!(", {d}")).collect();
        return Err(RequestError::bad(
            "inputs[0].shape",
            format!(
                "{} does not fit the model's input [n{expected}]",
                show(&input.shape)
            ),
        ));
    }
    let n = input.shape[0];
    if n == 0 || n > max_rows as u64 {
        return Err(RequestError::bad(
            "inputs[0].shape",
            format!("{n} examples; a request holds 1 to {max_rows}"),
        ));
    }
    Ok(n as usize)
}

fn check_count<T>(v: &[T], want: usize) -> Result<(), RequestError> {
    if v.len() != want {
        return Err(RequestError::bad(
            "inputs[0].data",
            format!("{} elements, but the shape holds {want}", v.len()),
        ));
    }
    Ok(())
}

fn png_pixels(field: &str, b64: &str, dims: &[usize; 3]) -> Result<Vec<u8>, RequestError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| RequestError::bad(field, format!("not base64: {e}")))?;
    crate::data::image::decode_png(Path::new(field), &bytes, dims[0], dims[1], dims[2])
        .map_err(|e| RequestError::bad(field, format!("not a usable PNG: {e}")))
}

/// Softmax of each row of `logits` (`n × classes`), in place into `probs`.
pub fn softmax_rows(logits: &[f32], classes: usize, probs: &mut Vec<f32>) {
    probs.clear();
    for row in logits.chunks(classes.max(1)) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let start = probs.len();
        probs.extend(row.iter().map(|&v| (v - m).exp()));
        let s: f32 = probs[start..].iter().sum();
        probs[start..].iter_mut().for_each(|p| *p /= s);
    }
}

/// The response body for `n` examples' logits.
pub fn encode_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    logits: &[f32],
    class_names: &[String],
    top_k: usize,
) -> String {
    let classes = class_names.len().max(1);
    let n = logits.len() / classes;
    let mut probs = Vec::new();
    softmax_rows(logits, classes, &mut probs);
    let k = top_k.min(classes);
    let mut top = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n * k);
    for row in probs.chunks(classes) {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        order.truncate(k);
        // Triton's classification output: "score:index:label".
        labels.extend(
            order
                .iter()
                .map(|&c| format!("{}:{c}:{}", row[c], class_names[c])),
        );
        top.push(
            order
                .iter()
                .map(|&c| TopClass {
                    class: c,
                    name: &class_names[c],
                    probability: row[c],
                })
                .collect(),
        );
    }
    let body = InferResponse {
        model_name: model,
        model_version: version.to_string(),
        id,
        outputs: (
            Output::new("logits", "FP32", [n, classes], logits),
            Output::new("probabilities", "FP32", [n, classes], &probs),
            Output::new("classes", "BYTES", [n, k], &labels),
        ),
        top,
    };
    serde_json::to_string(&body).expect("a response of strings and finite numbers serialises")
}

/// The response body, serialised straight from borrowed data (no JSON
/// tree is built: most of a small model's answer time was that tree).
#[derive(serde::Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: (Output<'a, f32>, Output<'a, f32>, Output<'a, String>),
    top: Vec<Vec<TopClass<'a>>>,
}

#[derive(serde::Serialize)]
struct Output<'a, T> {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 2],
    data: &'a [T],
}

impl<'a, T> Output<'a, T> {
    fn new(name: &'static str, datatype: &'static str, shape: [usize; 2], data: &'a [T]) -> Self {
        Output {
            name,
            datatype,
            shape,
            data,
        }
    }
}

#[derive(serde::Serialize)]
struct TopClass<'a> {
    class: usize,
    name: &'a str,
    probability: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> InputSpec {
        InputSpec::Image {
            dims: [1, 2, 2],
            normalizer: Normalizer {
                mean: vec![0.5],
                std: vec![0.25],
            },
        }
    }

    #[test]
    fn nested_and_flat_data_decode_alike() {
        let flat = br#"{"inputs":[{"name":"input","shape":[2,1,2,2],"datatype":"FP32","data":[1,2,3,4,5,6,7,8.5]}]}"#;
        let nested = br#"{"inputs":[{"name":"input","shape":[2,1,2,2],"datatype":"FP32","data":[[[[1,2],[3,4]]],[[[5,6],[7,8.5]]]]}]}"#;
        let a = decode(flat, &image(), 8).unwrap();
        assert_eq!(a, decode(nested, &image(), 8).unwrap());
        assert_eq!(a.n, 2);
        assert_eq!(
            a.rows,
            Rows::Values(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.5])
        );
    }

    #[test]
    fn uint8_pixels_pass_through_for_the_worker_to_normalise() {
        let body = br#"{"id":"x","inputs":[{"name":"input","shape":[1,1,2,2],"datatype":"UINT8","data":[0,51,128,255]}],"parameters":{"top_k":1}}"#;
        let r = decode(body, &image(), 8).unwrap();
        assert_eq!(r.rows, Rows::Pixels(vec![0, 51, 128, 255]));
        assert_eq!((r.top_k, r.id.as_deref()), (1, Some("x")));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 6] = [
            (b"{", "body"),
            (br#"{"inputs":[]}"#, "inputs"),
            (br#"{"inputs":[{"name":"x","shape":[1,1,2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#, "inputs[0].name"),
            (br#"{"inputs":[{"name":"input","shape":[1,2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#, "inputs[0].shape"),
            (br#"{"inputs":[{"name":"input","shape":[1,1,2,2],"datatype":"UINT8","data":[1,2,3,256]}]}"#, "inputs[0].data[3]"),
            (br#"{"inputs":[{"name":"input","shape":[1,1,2,2],"datatype":"INT64","data":[1,2,3,4]}]}"#, "inputs[0].datatype"),
        ];
        for (body, field) in cases {
            let e = decode(body, &image(), 8).unwrap_err();
            assert_eq!((e.status, e.field.as_str()), (400, field), "{e}");
        }
    }

    #[test]
    fn response_probabilities_sum_to_one_and_top_is_sorted() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let body = encode_response("m", 1, Some("q"), &[0.5, 2.0, -1.0], &names, 2);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let p: Vec<f64> = serde_json::from_value(v["outputs"][1]["data"].clone()).unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        assert_eq!(v["top"][0][0]["name"], "b");
        assert_eq!(v["top"][0][1]["name"], "a");
        assert_eq!(v["id"], "q");
    }
}
