//! Output sizes and source crops, computed from the (upright) source size alone.

use super::error::ImageFailure;
use super::options::{Fit, ImageOptions, Variant};

/// A rectangle of the source, in source pixels (fractional: the resizer samples sub-pixel).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Crop {
    pub(crate) left: f64,
    pub(crate) top: f64,
    pub(crate) width: f64,
    pub(crate) height: f64,
}

/// What one variant makes of an upright `source_w x source_h` image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// The artifact's file stem.
    pub(crate) name: String,
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// The part of the source that is scaled to `width x height` (all of it unless `cover`).
    pub(crate) crop: Crop,
}

impl Plan {
    /// Output pixels per source pixel, along the axis that needs the most: the decoder may
    /// shrink the source by anything down to this factor without losing detail the output
    /// would have had.
    pub(crate) fn required_scale(&self) -> f64 {
        (f64::from(self.width) / self.crop.width).max(f64::from(self.height) / self.crop.height)
    }
}

fn round_side(x: f64) -> u32 {
    // An upscaled side may exceed u32: the cast saturates, and `check_budget` refuses the
    // plan before anything is allocated for it.
    (x.round() as u32).max(1)
}

/// Plans one variant. Without `upscale`, no side of the output is longer than the source's:
/// `contain` never scales above 1, and `cover`/`fill` clamp each side of the box to the source
/// (so `cover` still crops rather than distorts).
pub(crate) fn plan(
    source_w: u32,
    source_h: u32,
    variant: &Variant,
    fit: Fit,
    upscale: bool,
) -> Plan {
    let (sw, sh) = (f64::from(source_w), f64::from(source_h));
    let full = Crop {
        left: 0.0,
        top: 0.0,
        width: sw,
        height: sh,
    };
    let cap = |scale: f64| if upscale { scale } else { scale.min(1.0) };
    let (width, height, crop) = match (variant.width, variant.height) {
        (None, None) => (source_w, source_h, full),
        (Some(w), None) => {
            let s = cap(f64::from(w) / sw);
            (round_side(sw * s), round_side(sh * s), full)
        }
        (None, Some(h)) => {
            let s = cap(f64::from(h) / sh);
            (round_side(sw * s), round_side(sh * s), full)
        }
        (Some(w), Some(h)) => {
            let (bw, bh) = (f64::from(w), f64::from(h));
            match fit {
                Fit::Contain => {
                    let s = cap((bw / sw).min(bh / sh));
                    (round_side(sw * s).min(w), round_side(sh * s).min(h), full)
                }
                Fit::Fill | Fit::Cover => {
                    let (w, h) = if upscale {
                        (w, h)
                    } else {
                        (w.min(source_w), h.min(source_h))
                    };
                    let crop = if fit == Fit::Cover {
                        centred_crop(sw, sh, f64::from(w) / f64::from(h))
                    } else {
                        full
                    };
                    (w, h, crop)
                }
            }
        }
    };
    Plan {
        name: variant.name.clone(),
        width,
        height,
        crop,
    }
}

/// Checks, before any pixel buffer exists, that the outputs of all `plans` together, and the
/// working buffer of each resize, stay within `max_pixels`. `source_w x source_h` is the upright
/// source size.
///
/// A two-pass resize holds an intermediate image of `output width x source height` (or
/// `source width x output height`, depending on the pass order), so both are bounded: an
/// option that stretches a thin image (a 4096x1 PNG asked for `height: 4096` with `upscale`
/// would be 16 million pixels wide) fails here instead of allocating gigabytes.
pub(crate) fn check_budget(
    source_w: u32,
    source_h: u32,
    plans: &[Plan],
    max_pixels: u64,
) -> Result<(), ImageFailure> {
    let too_many = |what: String, pixels: u64| ImageFailure::OutputPixels {
        what,
        pixels,
        max_pixels,
    };
    let mut total = 0u64;
    for plan in plans {
        let (w, h) = (u64::from(plan.width), u64::from(plan.height));
        let pixels = w.saturating_mul(h);
        total = total.saturating_add(pixels);
        let work = w
            .saturating_mul(u64::from(source_h))
            .max(u64::from(source_w).saturating_mul(h));
        if pixels > max_pixels {
            return Err(too_many(
                format!("{} would be {}x{}", plan.name, plan.width, plan.height),
                pixels,
            ));
        }
        if work > max_pixels {
            return Err(too_many(
                format!(
                    "resizing {source_w}x{source_h} to {}x{} for {}",
                    plan.width, plan.height, plan.name
                ),
                work,
            ));
        }
    }
    if total > max_pixels {
        return Err(too_many(format!("{} outputs together", plans.len()), total));
    }
    Ok(())
}

/// The output pixels the options fix whatever the source: an upscaled `fill` or `cover` box
/// is exactly its box. Other outputs depend on the source size and count as 0 here.
pub(crate) fn known_output_pixels(options: &ImageOptions) -> u64 {
    if !options.upscale || options.fit == Fit::Contain {
        return 0;
    }
    options
        .variants
        .iter()
        .filter_map(|v| Some(u64::from(v.width?) * u64::from(v.height?)))
        .fold(0u64, u64::saturating_add)
}

/// The largest centred rectangle of the source with the given aspect ratio (width / height).
fn centred_crop(sw: f64, sh: f64, aspect: f64) -> Crop {
    if sw / sh > aspect {
        let width = sh * aspect;
        Crop {
            left: (sw - width) / 2.0,
            top: 0.0,
            width,
            height: sh,
        }
    } else {
        let height = sw / aspect;
        Crop {
            left: 0.0,
            top: (sh - height) / 2.0,
            width: sw,
            height,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(width: Option<u32>, height: Option<u32>) -> Variant {
        Variant {
            name: "v".into(),
            width,
            height,
        }
    }

    #[test]
    fn height_only_keeps_the_aspect_ratio() {
        let p = plan(6000, 4000, &v(None, Some(720)), Fit::Contain, false);
        assert_eq!((p.width, p.height), (1080, 720));
        assert!((p.required_scale() - 0.18).abs() < 1e-9);
    }

    #[test]
    fn contain_cover_fill() {
        let p = plan(800, 600, &v(Some(400), Some(400)), Fit::Contain, false);
        assert_eq!((p.width, p.height), (400, 300));
        let p = plan(800, 600, &v(Some(400), Some(400)), Fit::Cover, false);
        assert_eq!((p.width, p.height), (400, 400));
        assert_eq!(p.crop.width, 600.0);
        assert_eq!(p.crop.left, 100.0);
        let p = plan(800, 600, &v(Some(400), Some(100)), Fit::Fill, false);
        assert_eq!((p.width, p.height), (400, 100));
        assert_eq!(p.crop.width, 800.0);
    }

    #[test]
    fn budget_refuses_stretched_thin_images_and_sums_variants() {
        let p = plan(4096, 1, &v(None, Some(4096)), Fit::Contain, true);
        assert_eq!((p.width, p.height), (4096 * 4096, 4096));
        assert!(check_budget(4096, 1, &[p], 100_000_000).is_err());
        let small = plan(1000, 1000, &v(None, Some(500)), Fit::Contain, false);
        assert!(check_budget(1000, 1000, std::slice::from_ref(&small), 1_000_000).is_ok());
        let plans = vec![
            small.clone(),
            small.clone(),
            small.clone(),
            small.clone(),
            small,
        ];
        // 5 x 250 000 output pixels: over a 1 000 000 budget together, not alone.
        assert!(check_budget(1000, 1000, &plans, 1_000_000).is_err());
    }

    #[test]
    fn no_upscaling_unless_asked() {
        let p = plan(800, 600, &v(None, Some(1080)), Fit::Contain, false);
        assert_eq!((p.width, p.height), (800, 600));
        let p = plan(800, 600, &v(None, Some(1200)), Fit::Contain, true);
        assert_eq!((p.width, p.height), (1600, 1200));
        let p = plan(800, 600, &v(Some(2000), Some(100)), Fit::Cover, false);
        assert_eq!((p.width, p.height), (800, 100));
        assert_eq!(p.crop.height, 100.0);
    }
}
