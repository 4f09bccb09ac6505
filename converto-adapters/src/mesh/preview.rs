//! The `preview.png` of a mesh conversion: a software rasterizer over the mesh already in
//! memory.
//!
//! The model is drawn with an orthographic camera at a fixed three-quarter angle (45 degrees
//! around the up axis, 30 degrees above the horizon), fitted to the frame with a 6 % margin,
//! flat shaded (Lambert, one fixed light from the upper left front, plus ambient light) on a
//! transparent background. Faces are two-sided: meshes with inconsistent winding look right.
//!
//! Memory: one `u32` a pixel (24 bits of depth and 8 of shade), so 1 MiB at the default
//! 512 px and 16 MiB at the largest size, 2048 px; nothing is sized by the mesh (vertices are
//! transformed as each triangle is drawn). The PNG is encoded row by row.

use std::io::Write;

use super::error::MeshError;
use super::model::{Mesh, MeshFormat, Monitor, Stage};

/// The smallest preview edge, in pixels.
pub const MIN_PREVIEW_SIZE: u32 = 64;
/// The largest preview edge, in pixels.
pub const MAX_PREVIEW_SIZE: u32 = 2048;
/// The preview edge when the options name none, in pixels.
pub const DEFAULT_PREVIEW_SIZE: u32 = 512;

/// Which model axis points up: formats differ by convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpAxis {
    /// +Y is up (OBJ, glTF).
    Y,
    /// +Z is up (STL and PLY, from CAD, 3D printing and scanners).
    Z,
}

impl UpAxis {
    /// The convention of a source format.
    pub fn of(format: MeshFormat) -> Self {
        match format {
            MeshFormat::Obj | MeshFormat::Glb => UpAxis::Y,
            MeshFormat::Stl | MeshFormat::Ply => UpAxis::Z,
        }
    }
}

/// A rendered frame: `size` x `size` pixels, row by row from the top, each `u32::MAX`
/// (background) or 24 bits of depth (smaller is nearer) above 8 bits of shade.
#[derive(Debug, Clone)]
pub struct Frame {
    size: u32,
    pixels: Vec<u32>,
    /// Triangles drawn (all but those past the pixel budget).
    drawn: u64,
}

/// Background pixels.
const EMPTY: u32 = u32::MAX;
/// The farthest depth a pixel may have (one below the 24-bit maximum, so no drawn pixel is
/// ever equal to [`EMPTY`]).
const FAR: f32 = 16_777_214.0;
/// Check for cancellation and report progress every this many triangles.
const TICK: usize = 1 << 16;
/// The light's share that reaches faces turned away from it.
const AMBIENT: f32 = 0.3;
/// The model's colour at full light (a light blue-grey).
const BASE: [f32; 3] = [178.0, 192.0, 212.0];

impl Frame {
    /// Its edge in pixels.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// How many of the mesh's triangles were drawn: all of them, unless the pixel budget
    /// (64 frames' worth of visited pixels) ran out first.
    pub fn drawn(&self) -> u64 {
        self.drawn
    }

    /// How many pixels the model covers.
    pub fn covered(&self) -> u64 {
        self.pixels.iter().filter(|&&p| p != EMPTY).count() as u64
    }

    /// Writes the frame as an 8-bit RGBA PNG (transparent background), one row at a time.
    pub fn write_png<W: Write>(&self, writer: W) -> Result<(), MeshError> {
        let mut encoder = png::Encoder::new(writer, self.size, self.size);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut png = encoder.write_header().map_err(png_error)?;
        let mut stream = png.stream_writer_with_size(64 * 1024).map_err(png_error)?;
        let width = self.size as usize;
        let mut row = vec![0u8; width * 4];
        for line in self.pixels.chunks_exact(width.max(1)) {
            for (out, &pixel) in row.chunks_exact_mut(4).zip(line) {
                let rgba = if pixel == EMPTY {
                    [0; 4]
                } else {
                    let light = f32::from((pixel & 0xFF) as u8) / 255.0;
                    let [r, g, b] = BASE.map(|c| (c * light).round() as u8);
                    [r, g, b, 255]
                };
                out.copy_from_slice(&rgba);
            }
            stream.write_all(&row)?;
        }
        stream.finish().map_err(png_error)?;
        png.finish().map_err(png_error)
    }
}

fn png_error(e: png::EncodingError) -> MeshError {
    match e {
        png::EncodingError::IoError(io) => MeshError::Io(io),
        other => MeshError::Preview(other.to_string()),
    }
}

/// The camera: model coordinates to pixel x, pixel y and quantised depth.
struct Camera {
    /// Rows of the view rotation (x right, y up, z towards the viewer).
    rotation: [[f64; 3]; 3],
    /// View-space point at the frame's centre (x, y) and the nearest depth (z).
    centre: [f64; 3],
    /// Pixels per model unit.
    scale: f64,
    /// Depth units per model unit.
    depth_scale: f64,
    /// Half the frame, in pixels.
    half: f64,
}

impl Camera {
    /// Fits the bounding box of `mesh`'s vertices into a `size`-pixel frame.
    fn fit(mesh: &Mesh, size: u32, up: UpAxis) -> Self {
        let (yaw, pitch) = (45f64.to_radians(), 30f64.to_radians());
        // Model to "Y up": Z-up models turn -90 degrees about X (a proper rotation).
        let upright: [[f64; 3]; 3] = match up {
            UpAxis::Y => [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            UpAxis::Z => [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]],
        };
        // Turn the model by `yaw` about the vertical, then tilt it towards the viewer.
        let (sy, cy) = yaw.sin_cos();
        let turn = [[cy, 0.0, -sy], [0.0, 1.0, 0.0], [sy, 0.0, cy]];
        let (sp, cp) = pitch.sin_cos();
        let tilt = [[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]];
        let rotation = mul(tilt, mul(turn, upright));

        let mut low = [f64::INFINITY; 3];
        let mut high = [f64::NEG_INFINITY; 3];
        for p in &mesh.positions {
            for axis in 0..3 {
                let v = f64::from(p[axis]);
                low[axis] = low[axis].min(v);
                high[axis] = high[axis].max(v);
            }
        }
        if mesh.positions.is_empty() {
            (low, high) = ([0.0; 3], [0.0; 3]);
        }
        // The view-space extent of the box's eight corners.
        let mut view_low = [f64::INFINITY; 3];
        let mut view_high = [f64::NEG_INFINITY; 3];
        for corner in 0..8 {
            let p = [0, 1, 2].map(|axis| {
                if corner >> axis & 1 == 0 {
                    low[axis]
                } else {
                    high[axis]
                }
            });
            let v = apply(&rotation, p);
            for axis in 0..3 {
                view_low[axis] = view_low[axis].min(v[axis]);
                view_high[axis] = view_high[axis].max(v[axis]);
            }
        }
        let extent = (view_high[0] - view_low[0]).max(view_high[1] - view_low[1]);
        let usable = f64::from(size) * 0.88;
        let scale = if extent > 0.0 && extent.is_finite() {
            usable / extent
        } else {
            1.0
        };
        let depth = view_high[2] - view_low[2];
        let depth_scale = if depth > 0.0 && depth.is_finite() {
            f64::from(FAR) / depth
        } else {
            0.0
        };
        Camera {
            rotation,
            centre: [
                (view_low[0] + view_high[0]) / 2.0,
                (view_low[1] + view_high[1]) / 2.0,
                view_high[2],
            ],
            scale,
            depth_scale,
            half: f64::from(size) / 2.0,
        }
    }

    /// Pixel x, pixel y (down) and depth (0 nearest) of a model point.
    #[inline]
    fn project(&self, p: [f32; 3]) -> [f32; 3] {
        let v = apply(&self.rotation, p.map(f64::from));
        [
            (self.half + (v[0] - self.centre[0]) * self.scale) as f32,
            (self.half - (v[1] - self.centre[1]) * self.scale) as f32,
            ((self.centre[2] - v[2]) * self.depth_scale) as f32,
        ]
    }
}

fn mul(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

#[inline]
fn apply(m: &[[f64; 3]; 3], p: [f64; 3]) -> [f64; 3] {
    m.map(|row| row[0] * p[0] + row[1] * p[1] + row[2] * p[2])
}

/// Renders `mesh` into a `size` x `size` frame (`size` within
/// [`MIN_PREVIEW_SIZE`]..=[`MAX_PREVIEW_SIZE`]).
///
/// Never fails on the mesh's content: a mesh with no triangles, or whose triangles all have
/// zero area (every vertex on one line or point), gives a blank, fully transparent frame.
/// Indices out of range are skipped (the converter validates the mesh before).
pub fn render(
    mesh: &Mesh,
    size: u32,
    up: UpAxis,
    monitor: &mut Monitor<'_>,
) -> Result<Frame, MeshError> {
    if !(MIN_PREVIEW_SIZE..=MAX_PREVIEW_SIZE).contains(&size) {
        return Err(MeshError::Preview(format!(
            "preview size {size} is outside {MIN_PREVIEW_SIZE}..={MAX_PREVIEW_SIZE}"
        )));
    }
    let camera = Camera::fit(mesh, size, up);
    // The light, in view space (towards the upper left, in front of the model).
    let light = {
        let l = [-0.45f32, 0.65, 0.62];
        let len = (l[0] * l[0] + l[1] * l[1] + l[2] * l[2]).sqrt();
        l.map(|c| c / len)
    };
    let rot = camera.rotation.map(|row| row.map(|c| c as f32));
    let n = size as usize;
    let mut pixels = vec![EMPTY; n * n];
    let total = mesh.triangles.len() as u64;
    let corner = |i: u32| mesh.positions.get(i as usize).copied();
    // The pixels the triangles' boxes may visit in all: a real mesh's triangles cover the
    // frame a few times over, but a hostile one (a million copies of a frame-sized triangle)
    // would cost triangles x pixels. Past the budget the preview keeps what it has drawn.
    let mut budget = FRAGMENT_BUDGET_PER_PIXEL * (n as u64) * (n as u64);
    let mut drawn = total;
    for (done, t) in mesh.triangles.iter().enumerate() {
        if done % TICK == 0 {
            monitor.update(Stage::Rendering, done as u64, total)?;
        }
        let (Some(a), Some(b), Some(c)) = (corner(t[0]), corner(t[1]), corner(t[2])) else {
            continue;
        };
        // Flat shade from the face normal, turned towards the viewer (two-sided faces).
        let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
        let normal = [
            u[1] * v[2] - u[2] * v[1],
            u[2] * v[0] - u[0] * v[2],
            u[0] * v[1] - u[1] * v[0],
        ];
        let view = rot.map(|row| row[0] * normal[0] + row[1] * normal[1] + row[2] * normal[2]);
        let length = (view[0] * view[0] + view[1] * view[1] + view[2] * view[2]).sqrt();
        let lambert = if length > 0.0 && length.is_finite() {
            let facing = if view[2] < 0.0 { -1.0 } else { 1.0 };
            (facing * (view[0] * light[0] + view[1] * light[1] + view[2] * light[2]) / length)
                .max(0.0)
        } else {
            // A sliver whose normal underflows: lit like a face seen head-on.
            light[2]
        };
        let shade = ((AMBIENT + (1.0 - AMBIENT) * lambert) * 255.0).round() as u32 & 0xFF;
        let visited = draw(
            &mut pixels,
            n,
            [camera.project(a), camera.project(b), camera.project(c)],
            shade,
        );
        budget = budget.saturating_sub(visited);
        if budget == 0 {
            drawn = done as u64 + 1;
            tracing::debug!(drawn, total, "preview: pixel budget spent");
            break;
        }
    }
    monitor.update(Stage::Rendering, total, total)?;
    Ok(Frame {
        size,
        pixels,
        drawn,
    })
}

/// How many times over the frame's pixels the triangles' bounding boxes may be visited before
/// the preview stops drawing (see [`render`]).
const FRAGMENT_BUDGET_PER_PIXEL: u64 = 64;

/// Fills the pixels whose centres lie in the triangle (edges included), where it is nearer
/// than what is there. Returns how many pixels it visited (its clipped bounding box).
#[inline]
fn draw(pixels: &mut [u32], n: usize, [p0, mut p1, mut p2]: [[f32; 3]; 3], shade: u32) -> u64 {
    let edge = |a: [f32; 3], b: [f32; 3], x: f32, y: f32| {
        (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])
    };
    let mut area = edge(p0, p1, p2[0], p2[1]);
    if area < 0.0 {
        std::mem::swap(&mut p1, &mut p2);
        area = -area;
    }
    if !(area > 0.0 && area.is_finite()) {
        return 0;
    }
    let limit = n as f32 - 1.0;
    let x_min = (p0[0].min(p1[0]).min(p2[0]) - 0.5).ceil().max(0.0);
    let x_max = (p0[0].max(p1[0]).max(p2[0]) - 0.5).floor().min(limit);
    let y_min = (p0[1].min(p1[1]).min(p2[1]) - 0.5).ceil().max(0.0);
    let y_max = (p0[1].max(p1[1]).max(p2[1]) - 0.5).floor().min(limit);
    if !(x_min <= x_max && y_min <= y_max) {
        return 0;
    }
    let inverse = 1.0 / area;
    // Edge functions step by these per pixel in x.
    let step = [p2[1] - p1[1], p0[1] - p2[1], p1[1] - p0[1]].map(|d| -d);
    let (x0, x1) = (x_min as usize, x_max as usize);
    let visited = (x1 - x0 + 1) as u64 * (y_max as usize - y_min as usize + 1) as u64;
    for y in y_min as usize..=y_max as usize {
        let cy = y as f32 + 0.5;
        let cx = x0 as f32 + 0.5;
        let mut w = [
            edge(p1, p2, cx, cy),
            edge(p2, p0, cx, cy),
            edge(p0, p1, cx, cy),
        ];
        let Some(row) = pixels.get_mut(y * n + x0..=y * n + x1) else {
            return visited;
        };
        for pixel in row {
            if w[0] >= 0.0 && w[1] >= 0.0 && w[2] >= 0.0 {
                let depth = (w[0] * p0[2] + w[1] * p1[2] + w[2] * p2[2]) * inverse;
                let value = (depth.clamp(0.0, FAR) as u32) << 8 | shade;
                if value < *pixel {
                    *pixel = value;
                }
            }
            w[0] += step[0];
            w[1] += step[1];
            w[2] += step[2];
        }
    }
    visited
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cube() -> Mesh {
        let positions = (0..8u32)
            .map(|i| [i & 1, i >> 1 & 1, i >> 2 & 1].map(|c| c as f32))
            .collect();
        let quads = [
            [0, 2, 3, 1],
            [4, 5, 7, 6],
            [0, 1, 5, 4],
            [2, 6, 7, 3],
            [0, 4, 6, 2],
            [1, 3, 7, 5],
        ];
        let triangles = quads
            .iter()
            .flat_map(|q: &[u32; 4]| [[q[0], q[1], q[2]], [q[0], q[2], q[3]]])
            .collect();
        Mesh {
            positions,
            triangles,
        }
    }

    #[test]
    fn a_cube_fills_a_good_part_of_the_frame_and_shows_three_shades() {
        for up in [UpAxis::Y, UpAxis::Z] {
            let frame = render(&cube(), 128, up, &mut Monitor::new()).expect("render");
            let share = frame.covered() as f64 / (128.0 * 128.0);
            assert!((0.35..0.85).contains(&share), "{up:?}: {share}");
            let mut shades: Vec<u32> = frame
                .pixels
                .iter()
                .filter(|&&p| p != EMPTY)
                .map(|p| p & 0xFF)
                .collect();
            shades.sort_unstable();
            shades.dedup();
            assert_eq!(
                shades.len(),
                3,
                "three visible faces, three shades: {shades:?}"
            );
        }
    }

    #[test]
    fn empty_and_flat_meshes_give_a_blank_frame() {
        let empty = Mesh::default();
        let frame = render(&empty, 64, UpAxis::Y, &mut Monitor::new()).expect("render");
        assert_eq!(frame.covered(), 0);
        let line = Mesh {
            positions: vec![[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]],
            triangles: vec![[0, 1, 2]],
        };
        let frame = render(&line, 64, UpAxis::Z, &mut Monitor::new()).expect("render");
        assert_eq!(frame.covered(), 0);
    }

    #[test]
    fn overlapping_frame_sized_triangles_stop_at_the_pixel_budget() {
        // Every triangle covers about half the frame: without the budget, triangles x pixels.
        let triangles = 10_000;
        let mesh = Mesh {
            positions: vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            triangles: vec![[0, 1, 2]; triangles],
        };
        let frame = render(&mesh, 64, UpAxis::Z, &mut Monitor::new()).expect("render");
        assert!(frame.covered() > 0, "what was drawn is kept");
        // 64 frames' worth of boxes, each a good part of the frame: a few hundred triangles of
        // the 10,000.
        assert!(
            frame.drawn() < 1_000,
            "stopped early, not after {}",
            frame.drawn()
        );
        assert_eq!(
            render(&cube(), 64, UpAxis::Z, &mut Monitor::new())
                .expect("cube")
                .drawn(),
            12
        );
    }

    #[test]
    fn sizes_outside_the_range_are_refused() {
        for size in [0, 63, 2049] {
            assert!(render(&cube(), size, UpAxis::Y, &mut Monitor::new()).is_err());
        }
    }
}
