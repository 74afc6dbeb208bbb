//! `Tensor`: a device buffer (or a window of one) with a shape and an element type.

use std::sync::Arc;

use crate::context::{Flag, Home, LossContext, PoolBuf};
use crate::error::{Error, Result};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float: values, logits, gradients.
    F32,
    /// 32-bit signed integer: class labels.
    I32,
    /// 16-bit float: inputs of the pointwise and segmentation losses where the adapter has
    /// SHADER_F16 (they accumulate in f32 and write f32 gradients).
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 => 2,
        }
    }
}

/// Element count of a shape, refusing overflow.
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::TooLarge(format!("the element count of shape {shape:?} overflows")))
}

/// A device buffer with a shape and a dtype. Cloning is cheap and shares the buffer. A tensor
/// made by the context goes back to the context's pool when its last clone is dropped.
#[derive(Clone)]
pub struct Tensor {
    buf: Arc<PoolBuf>,
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
    flag: Option<Arc<Flag>>,
    home: Home,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {:?}, offset {})",
            self.shape, self.dtype, self.offset
        )
    }
}

impl Tensor {
    pub(crate) fn new(buf: Arc<PoolBuf>, shape: Vec<usize>, dtype: DType, home: Home) -> Self {
        Tensor {
            buf,
            offset: 0,
            shape,
            dtype,
            flag: None,
            home,
        }
    }

    /// Wraps a caller's buffer without a copy: `shape` elements of `dtype` starting at byte
    /// `offset`. The buffer must have been made on `ctx`'s device (the tensor then belongs to
    /// `ctx`, and to any other context over the same device); it needs `STORAGE` usage (and
    /// `COPY_SRC` to be read back), and the offset must be a multiple of the device's
    /// `min_storage_buffer_offset_alignment`.
    pub fn from_buffer(
        ctx: &LossContext,
        buffer: wgpu::Buffer,
        offset: u64,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Self> {
        let n = checked_numel(shape)? as u64;
        let need = n
            .checked_mul(dtype.size())
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| Error::TooLarge(format!("shape {shape:?} overflows")))?;
        if need > buffer.size() {
            return Err(Error::InvalidInput(format!(
                "a tensor of shape {shape:?} at offset {offset} needs {need} bytes, the buffer has {}",
                buffer.size()
            )));
        }
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidInput(
                "the buffer needs STORAGE usage to be bound by deepml".into(),
            ));
        }
        let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        if !offset.is_multiple_of(align) {
            return Err(Error::InvalidInput(format!(
                "offset {offset} is not a multiple of {align}, the device's storage-binding alignment"
            )));
        }
        Ok(Tensor {
            buf: Arc::new(PoolBuf::wrap(buffer)),
            offset,
            shape: shape.to_vec(),
            dtype,
            flag: None,
            home: ctx.home.clone(),
        })
    }

    /// The device this tensor lives on.
    pub(crate) fn home(&self) -> &Home {
        &self.home
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The underlying wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buf.buffer
    }

    /// The byte offset of element 0 in the buffer.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of the elements.
    pub fn byte_len(&self) -> u64 {
        self.numel() as u64 * self.dtype.size()
    }

    /// Bytes of the elements rounded up to 4, the granularity of bindings and copies (the
    /// buffer is always allocated that large).
    pub fn padded_len(&self) -> u64 {
        self.byte_len().div_ceil(4) * 4
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if checked_numel(shape)? != self.numel() {
            return Err(Error::ShapeMismatch(format!(
                "cannot reshape {:?} into {shape:?}",
                self.shape
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// The error flags of the computation that made this tensor, if it checks any.
    pub(crate) fn flag(&self) -> Option<&Flag> {
        self.flag.as_deref()
    }

    pub(crate) fn with_flag(mut self, flag: Option<Arc<Flag>>) -> Tensor {
        if flag.is_some() {
            self.flag = flag;
        }
        self
    }

    /// Whether two tensors share a buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        self.buf.buffer == other.buf.buffer
    }
}
