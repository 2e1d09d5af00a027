//! Reading ONNX protobuf messages: tensors (initializers and constants) and
//! node attributes, with every size checked before anything is allocated.

use onnx_ir::{AttributeProto, NodeProto, TensorProto};

use crate::{OnnxError, Result};

/// The most elements one tensor may hold (2^28, 1 GiB of f32).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 28;

/// A constant tensor: its dimensions and values.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    /// Dimensions (empty for a scalar).
    pub dims: Vec<usize>,
    /// Values, row-major.
    pub data: Data,
}

/// Constant values, as floats or integers.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Floating-point values (f32 and f64 tensors).
    F(Vec<f32>),
    /// Integer values (int32, int64, bool tensors: shapes, axes, indices).
    I(Vec<i64>),
}

impl Const {
    /// A float tensor.
    pub fn float(dims: Vec<usize>, v: Vec<f32>) -> Const {
        Const { dims, data: Data::F(v) }
    }

    /// An integer tensor.
    pub fn int(dims: Vec<usize>, v: Vec<i64>) -> Const {
        Const { dims, data: Data::I(v) }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }

    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as floats.
    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as integers (floats must be whole numbers).
    pub fn ints(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::I(v) => Some(v.clone()),
            Data::F(v) => v
                .iter()
                .map(|&x| (x.fract() == 0.0 && x.abs() < 1e15).then_some(x as i64))
                .collect(),
        }
    }

    /// The single value of a one-element tensor, as a float.
    pub fn scalar(&self) -> Option<f32> {
        (self.len() == 1).then(|| self.floats()[0])
    }
}

fn tensor_err(name: &str, reason: impl Into<String>) -> OnnxError {
    OnnxError::Tensor { name: name.to_string(), reason: reason.into() }
}

/// ONNX element types (TensorProto.DataType).
const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;
const BOOL: i32 = 9;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;

/// Decodes a tensor (an initializer or a constant's value).
pub fn tensor(t: &TensorProto) -> Result<Const> {
    let name = if t.name.is_empty() { "(unnamed)" } else { &t.name };
    if !t.external_data.is_empty() || t.data_location.value() == 1 {
        return Err(tensor_err(
            name,
            "its values are stored in an external data file; re-export the model with every \
             weight inside the .onnx file (torch.onnx.export(..., external_data=False))",
        ));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    let mut count: u64 = 1;
    for &d in &t.dims {
        if d < 0 {
            return Err(tensor_err(name, format!("negative dimension {d}")));
        }
        count = count.saturating_mul(d as u64);
        dims.push(d as usize);
    }
    if count > MAX_TENSOR_ELEMENTS {
        return Err(tensor_err(name, format!("{count} elements (at most {MAX_TENSOR_ELEMENTS})")));
    }
    let n = count as usize;
    let raw = &t.raw_data;
    let check = |len: usize| -> Result<()> {
        if len != n {
            return Err(tensor_err(
                name,
                format!("holds {len} values but its dimensions {dims:?} need {n}"),
            ));
        }
        Ok(())
    };
    let from_raw = |width: usize| -> Result<&[u8]> {
        if raw.len() != n * width {
            return Err(tensor_err(
                name,
                format!(
                    "raw data of {} bytes, expected {} ({n} values of {width} bytes)",
                    raw.len(),
                    n * width
                ),
            ));
        }
        Ok(raw)
    };
    let c = match t.data_type {
        FLOAT => {
            let v: Vec<f32> = if !raw.is_empty() {
                from_raw(4)?
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                t.float_data.clone()
            };
            check(v.len())?;
            Const::float(dims, v)
        }
        DOUBLE => {
            let v: Vec<f32> = if !raw.is_empty() {
                from_raw(8)?
                    .chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        f64::from_le_bytes(b) as f32
                    })
                    .collect()
            } else {
                t.double_data.iter().map(|&x| x as f32).collect()
            };
            check(v.len())?;
            Const::float(dims, v)
        }
        INT64 => {
            let v: Vec<i64> = if !raw.is_empty() {
                from_raw(8)?
                    .chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        i64::from_le_bytes(b)
                    })
                    .collect()
            } else {
                t.int64_data.clone()
            };
            check(v.len())?;
            Const::int(dims, v)
        }
        INT32 => {
            let v: Vec<i64> = if !raw.is_empty() {
                from_raw(4)?
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect()
            } else {
                t.int32_data.iter().map(|&x| x as i64).collect()
            };
            check(v.len())?;
            Const::int(dims, v)
        }
        BOOL => {
            let v: Vec<i64> = if !raw.is_empty() {
                from_raw(1)?.iter().map(|&b| i64::from(b != 0)).collect()
            } else {
                t.int32_data.iter().map(|&x| i64::from(x != 0)).collect()
            };
            check(v.len())?;
            Const::int(dims, v)
        }
        FLOAT16 => {
            return Err(tensor_err(
                name,
                "float16 weights are not supported; export the model in float32",
            ))
        }
        other => {
            return Err(tensor_err(
                name,
                format!("element type {other} is not supported (float32, float64, int32, int64)"),
            ))
        }
    };
    if let Data::F(v) = &c.data {
        if v.iter().any(|x| !x.is_finite()) {
            return Err(tensor_err(name, "holds a value that is not finite"));
        }
    }
    Ok(c)
}

/// A node's attributes, looked up by name.
pub struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    /// The attributes of `node`.
    pub fn of(node: &'a NodeProto) -> Self {
        Attrs { node }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// Whether the attribute is present.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// An integer attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).map(|a| a.i)
    }

    /// A float attribute.
    pub fn float(&self, name: &str) -> Option<f32> {
        self.get(name).map(|a| a.f)
    }

    /// A list of integers.
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    /// A list of floats.
    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.get(name).map(|a| a.floats.clone())
    }

    /// A string attribute.
    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// A tensor attribute.
    pub fn tensor(&self, name: &str) -> Option<&'a TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }

    /// Names of all attributes.
    pub fn names(&self) -> Vec<&'a str> {
        self.node.attribute.iter().map(|a| a.name.as_str()).collect()
    }
}
