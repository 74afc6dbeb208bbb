//! Windows over a `[outer, C, inner]` input for the losses that own one pixel per thread
//! (FocalLoss, TverskyLoss): whole samples per window (every channel of a pixel in one binding),
//! or tiles of elements where the input is flat (`C = inner = 1`). Per-pixel tensors (class
//! labels, a per-pixel loss) are bound whole when they fit one binding, else windowed in step
//! with offsets kept aligned.

use super::{float_inputs, want_dtype};
use crate::config::{ChannelLayout, SmpMode};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::Bind;
use crate::tensor::{DType, Tensor};

/// The element types of a segmentation_models_pytorch loss's inputs: `y_pred` f32 or f16, and
/// `y_true` i32 class labels in multiclass mode, else of `y_pred`'s type. Returns whether the
/// logits are f16.
pub(crate) fn smp_inputs(
    ctx: &LossContext,
    what: &str,
    mode: SmpMode,
    y_pred: &Tensor,
    y_true: &Tensor,
) -> Result<bool> {
    if mode == SmpMode::Multiclass {
        want_dtype(what, "y_true", y_true, DType::I32)?;
        float_inputs(ctx, what, &[("y_pred", y_pred)])
    } else {
        float_inputs(ctx, what, &[("y_pred", y_pred), ("y_true", y_true)])
    }
}

/// One dispatch window.
pub(crate) struct PixelWindow {
    /// The window's elements of the input: `[elem_first, elem_first + elems)`.
    pub elem_first: u64,
    pub elems: u64,
    /// Its pixels: `[px_first, px_first + pixels)`.
    pub px_first: u64,
    pub pixels: u64,
    /// Its tiles, and the index of its first among all tiles.
    pub tile_base: u64,
    pub tiles: u64,
    /// Where a shader indexes a per-pixel tensor bound whole: `px_first`, else 0.
    pub label_base: u64,
    whole: bool,
}

impl PixelWindow {
    /// A per-pixel tensor (labels, a per-pixel loss) for this window at `binding`.
    pub(crate) fn per_pixel(&self, binding: u32, t: &Tensor) -> Bind {
        if self.whole {
            Bind::tensor(binding, t)
        } else {
            Bind::window(binding, t, self.px_first, self.pixels)
        }
    }
    /// The input (or a tensor of its shape: the target, the gradient) for this window.
    pub(crate) fn elements(&self, binding: u32, t: &Tensor) -> Bind {
        Bind::window(binding, t, self.elem_first, self.elems)
    }
}

/// The windows of `layout`, with tiles of `tile` pixels; `elem_bytes` is the input's element
/// size. Refuses a tensor whose indices do not fit 32 bits.
pub(crate) fn pixel_windows(
    ctx: &LossContext,
    what: &str,
    layout: ChannelLayout,
    elem_bytes: u64,
    tile: u64,
) -> Result<(Vec<PixelWindow>, u64)> {
    if layout.numel() as u64 > u32::MAX as u64 {
        return Err(Error::TooLarge(format!(
            "{what}: {} elements do not fit 32-bit indices",
            layout.numel()
        )));
    }
    let (c, inner) = (layout.channels as u64, layout.inner as u64);
    let pixels = layout.outer as u64 * inner;
    let flat = c == 1 && inner == 1;
    // Flat: pixel = element, so per-pixel tensors are windowed like the input.
    let whole = !flat && pixels * 4 <= ctx.max_window_bytes;
    let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let raw = if flat {
        ctx.windows(pixels, elem_bytes, 1)?
    } else if whole {
        ctx.windows(layout.outer as u64, c * inner * elem_bytes, 1)?
    } else {
        ctx.windows(
            layout.outer as u64,
            c * inner * elem_bytes,
            align / gcd(inner * 4, align),
        )?
    };
    let per = if flat { 1 } else { inner };
    let mut out = Vec::with_capacity(raw.len());
    let mut tile_base = 0;
    for w in raw {
        let (px_first, px) = (w.first * per, w.count * per);
        let tiles = px.div_ceil(tile);
        out.push(PixelWindow {
            elem_first: px_first * c,
            elems: px * c,
            px_first,
            pixels: px,
            tile_base,
            tiles,
            label_base: if whole { px_first } else { 0 },
            whole,
        });
        tile_base += tiles;
    }
    Ok((out, tile_base))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
