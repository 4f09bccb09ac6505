// A small mesh viewer: STL (binary and ASCII), OBJ and PLY (ASCII and binary) parsed from an
// artifact's bytes, drawn with WebGL; drag to rotate, shift-drag (or right-drag) to pan, wheel
// or pinch to zoom, and the same from the keyboard (arrows, shift+arrows, + and -).

const decoder = new TextDecoder();

/** Triangles as a flat Float32Array of positions (9 numbers a triangle). */
export function parseMesh(format, buffer) {
  switch (format) {
    case 'stl':
      return parseStl(buffer);
    case 'obj':
      return parseObj(decoder.decode(buffer));
    case 'ply':
      return parsePly(buffer);
    default:
      throw new Error(`no viewer for ${format}`);
  }
}

function parseStl(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength >= 84) {
    const count = view.getUint32(80, true);
    if (84 + count * 50 === buffer.byteLength) {
      const out = new Float32Array(count * 9);
      for (let i = 0; i < count; i++) {
        const base = 84 + i * 50 + 12;
        for (let j = 0; j < 9; j++) out[i * 9 + j] = view.getFloat32(base + j * 4, true);
      }
      return out;
    }
  }
  const text = decoder.decode(buffer);
  const numbers = [];
  const re = /vertex\s+(\S+)\s+(\S+)\s+(\S+)/g;
  let m;
  while ((m = re.exec(text))) numbers.push(+m[1], +m[2], +m[3]);
  if (!numbers.length) throw new Error('no triangles in this STL file');
  return new Float32Array(numbers.length - (numbers.length % 9)).map((_, i) => numbers[i]);
}

function parseObj(text) {
  const vertices = [];
  const out = [];
  const index = (token) => {
    const i = parseInt(token.split('/')[0], 10);
    return i < 0 ? vertices.length / 3 + i : i - 1;
  };
  const push = (i) => out.push(vertices[i * 3], vertices[i * 3 + 1], vertices[i * 3 + 2]);
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('v ')) {
      const [, x, y, z] = line.split(/\s+/);
      vertices.push(+x, +y, +z);
    } else if (line.startsWith('f ')) {
      const idx = line.split(/\s+/).slice(1).map(index);
      for (let k = 1; k + 1 < idx.length; k++) {
        push(idx[0]);
        push(idx[k]);
        push(idx[k + 1]);
      }
    }
  }
  if (!out.length) throw new Error('no faces in this OBJ file');
  return new Float32Array(out);
}

const PLY_TYPES = {
  char: ['getInt8', 1], int8: ['getInt8', 1], uchar: ['getUint8', 1], uint8: ['getUint8', 1],
  short: ['getInt16', 2], int16: ['getInt16', 2], ushort: ['getUint16', 2], uint16: ['getUint16', 2],
  int: ['getInt32', 4], int32: ['getInt32', 4], uint: ['getUint32', 4], uint32: ['getUint32', 4],
  float: ['getFloat32', 4], float32: ['getFloat32', 4], double: ['getFloat64', 8], float64: ['getFloat64', 8],
};

function parsePly(buffer) {
  const bytes = new Uint8Array(buffer);
  const head = decoder.decode(bytes.subarray(0, Math.min(bytes.length, 65536)));
  const endMatch = /end_header\r?\n/.exec(head);
  if (!head.startsWith('ply') || !endMatch) throw new Error('not a PLY file');
  const headerBytes = new TextEncoder().encode(head.slice(0, endMatch.index + endMatch[0].length)).length;
  let format = 'ascii';
  const elements = [];
  for (const line of head.slice(0, endMatch.index).split(/\r?\n/)) {
    const w = line.trim().split(/\s+/);
    if (w[0] === 'format') format = w[1];
    else if (w[0] === 'element') elements.push({ name: w[1], count: +w[2], props: [] });
    else if (w[0] === 'property' && elements.length) {
      const props = elements[elements.length - 1].props;
      if (w[1] === 'list') props.push({ name: w[4], list: true, countType: w[2], type: w[3] });
      else props.push({ name: w[2], type: w[1] });
    }
  }
  const vertices = [];
  const out = [];
  const tri = (idx) => {
    for (let k = 1; k + 1 < idx.length; k++) {
      for (const i of [idx[0], idx[k], idx[k + 1]]) {
        out.push(vertices[i * 3], vertices[i * 3 + 1], vertices[i * 3 + 2]);
      }
    }
  };
  const take = (el, values) => {
    if (el.name === 'vertex') {
      vertices.push(values.x, values.y, values.z);
    } else if (el.name === 'face') {
      const list = el.props.find((p) => p.list);
      if (list) tri(values[list.name]);
    }
  };
  if (format === 'ascii') {
    const words = decoder.decode(bytes.subarray(headerBytes)).split(/\s+/).filter(Boolean);
    let at = 0;
    for (const el of elements) {
      for (let n = 0; n < el.count; n++) {
        const values = {};
        for (const p of el.props) {
          if (p.list) {
            const count = +words[at++];
            values[p.name] = words.slice(at, at + count).map(Number);
            at += count;
          } else {
            values[p.name] = +words[at++];
          }
        }
        take(el, values);
      }
    }
  } else {
    const little = format === 'binary_little_endian';
    const view = new DataView(buffer, headerBytes);
    let at = 0;
    const read = (type) => {
      const [fn, size] = PLY_TYPES[type] || [];
      if (!fn) throw new Error(`PLY type ${type} is not supported`);
      const v = view[fn](at, little);
      at += size;
      return v;
    };
    for (const el of elements) {
      for (let n = 0; n < el.count; n++) {
        const values = {};
        for (const p of el.props) {
          if (p.list) {
            const count = read(p.countType);
            const list = new Array(count);
            for (let k = 0; k < count; k++) list[k] = read(p.type);
            values[p.name] = list;
          } else {
            values[p.name] = read(p.type);
          }
        }
        take(el, values);
      }
    }
  }
  if (!out.length) throw new Error('no faces in this PLY file');
  return new Float32Array(out);
}

function normals(positions) {
  const out = new Float32Array(positions.length);
  for (let i = 0; i < positions.length; i += 9) {
    const ax = positions[i + 3] - positions[i], ay = positions[i + 4] - positions[i + 1], az = positions[i + 5] - positions[i + 2];
    const bx = positions[i + 6] - positions[i], by = positions[i + 7] - positions[i + 1], bz = positions[i + 8] - positions[i + 2];
    let nx = ay * bz - az * by, ny = az * bx - ax * bz, nz = ax * by - ay * bx;
    const len = Math.hypot(nx, ny, nz) || 1;
    nx /= len; ny /= len; nz /= len;
    for (let k = 0; k < 3; k++) {
      out[i + k * 3] = nx;
      out[i + k * 3 + 1] = ny;
      out[i + k * 3 + 2] = nz;
    }
  }
  return out;
}

function bounds(positions) {
  const min = [Infinity, Infinity, Infinity];
  const max = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < positions.length; i += 3) {
    for (let k = 0; k < 3; k++) {
      const v = positions[i + k];
      if (v < min[k]) min[k] = v;
      if (v > max[k]) max[k] = v;
    }
  }
  const center = min.map((v, k) => (v + max[k]) / 2);
  const radius = Math.hypot(max[0] - min[0], max[1] - min[1], max[2] - min[2]) / 2 || 1;
  return { center, radius };
}

// Column-major 4x4 matrices.
function perspective(fovy, aspect, near, far) {
  const f = 1 / Math.tan(fovy / 2);
  const nf = 1 / (near - far);
  return [f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * nf, -1, 0, 0, 2 * far * near * nf, 0];
}

function multiply(a, b) {
  const out = new Array(16).fill(0);
  for (let c = 0; c < 4; c++) {
    for (let r = 0; r < 4; r++) {
      for (let k = 0; k < 4; k++) out[c * 4 + r] += a[k * 4 + r] * b[c * 4 + k];
    }
  }
  return out;
}

function lookAt(eye, target, up) {
  const sub = (a, b) => a.map((v, i) => v - b[i]);
  const norm = (v) => { const l = Math.hypot(...v) || 1; return v.map((x) => x / l); };
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const z = norm(sub(eye, target));
  const x = norm(cross(up, z));
  const y = cross(z, x);
  return [x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0, -dot(x, eye), -dot(y, eye), -dot(z, eye), 1];
}

const VERTEX = `
attribute vec3 position;
attribute vec3 normal;
uniform mat4 mvp;
varying vec3 vNormal;
void main() {
  vNormal = normal;
  gl_Position = mvp * vec4(position, 1.0);
}`;

const FRAGMENT = `
precision mediump float;
varying vec3 vNormal;
uniform vec3 light;
void main() {
  vec3 n = normalize(vNormal);
  float d = abs(dot(n, light));
  vec3 base = vec3(0.42, 0.62, 0.86);
  gl_FragColor = vec4(base * (0.25 + 0.75 * d), 1.0);
}`;

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
  return shader;
}

/**
 * Shows `positions` in `canvas`; returns a function that releases it. Throws when WebGL is
 * unavailable.
 */
export function showMesh(canvas, positions) {
  const gl = canvas.getContext('webgl', { antialias: true });
  if (!gl) throw new Error('WebGL is not available in this browser');
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
  gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
  gl.linkProgram(program);
  gl.useProgram(program);
  const attribute = (name, data) => {
    const buffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
    gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
    const loc = gl.getAttribLocation(program, name);
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, 3, gl.FLOAT, false, 0, 0);
    return buffer;
  };
  const buffers = [attribute('position', positions), attribute('normal', normals(positions))];
  const mvpLoc = gl.getUniformLocation(program, 'mvp');
  const lightLoc = gl.getUniformLocation(program, 'light');
  gl.enable(gl.DEPTH_TEST);
  const { center, radius } = bounds(positions);
  const view = { yaw: 0.8, pitch: 0.5, distance: radius * 2.6, target: [...center] };
  let frame = 0;

  function draw() {
    frame = 0;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    gl.viewport(0, 0, w, h);
    const dark = window.matchMedia('(prefers-color-scheme: dark)').matches;
    if (dark) gl.clearColor(0.1, 0.11, 0.13, 1);
    else gl.clearColor(0.95, 0.96, 0.97, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    const eye = [
      view.target[0] + view.distance * Math.cos(view.pitch) * Math.sin(view.yaw),
      view.target[1] + view.distance * Math.sin(view.pitch),
      view.target[2] + view.distance * Math.cos(view.pitch) * Math.cos(view.yaw),
    ];
    const proj = perspective(Math.PI / 4, w / h, radius * 0.01, radius * 100 + view.distance);
    gl.uniformMatrix4fv(mvpLoc, false, multiply(proj, lookAt(eye, view.target, [0, 1, 0])));
    const l = eye.map((v, i) => v - view.target[i]);
    const len = Math.hypot(...l) || 1;
    gl.uniform3f(lightLoc, l[0] / len, l[1] / len, l[2] / len);
    gl.drawArrays(gl.TRIANGLES, 0, positions.length / 3);
    canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
  }
  const redraw = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  function rotate(dx, dy) {
    view.yaw -= dx * 0.01;
    view.pitch = Math.max(-1.5, Math.min(1.5, view.pitch + dy * 0.01));
    redraw();
  }
  function pan(dx, dy) {
    const s = (view.distance / canvas.clientHeight) * 0.8;
    const right = [Math.cos(view.yaw), 0, -Math.sin(view.yaw)];
    view.target[0] -= right[0] * dx * s;
    view.target[2] -= right[2] * dx * s;
    view.target[1] += dy * s;
    redraw();
  }
  function zoom(factor) {
    view.distance = Math.max(radius * 0.05, Math.min(radius * 50, view.distance * factor));
    redraw();
  }

  const pointers = new Map();
  let pinch = 0;
  const down = (e) => {
    canvas.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY, button: e.button, shift: e.shiftKey });
  };
  const move = (e) => {
    const p = pointers.get(e.pointerId);
    if (!p) return;
    const dx = e.clientX - p.x;
    const dy = e.clientY - p.y;
    p.x = e.clientX;
    p.y = e.clientY;
    if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      const d = Math.hypot(a.x - b.x, a.y - b.y);
      if (pinch) zoom(pinch / d);
      pinch = d;
    } else if (p.button === 2 || p.shift || e.shiftKey) pan(dx, dy);
    else rotate(dx, dy);
  };
  const up = (e) => {
    pointers.delete(e.pointerId);
    pinch = 0;
  };
  const wheel = (e) => {
    e.preventDefault();
    zoom(Math.exp(e.deltaY * 0.001));
  };
  const key = (e) => {
    const step = 15;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (moves[e.key]) {
      const [dx, dy] = moves[e.key];
      if (e.shiftKey) pan(dx, dy);
      else rotate(dx, dy);
    } else if (e.key === '+' || e.key === '=') zoom(0.9);
    else if (e.key === '-' || e.key === '_') zoom(1.1);
    else return;
    e.preventDefault();
  };
  const menu = (e) => e.preventDefault();
  canvas.addEventListener('pointerdown', down);
  canvas.addEventListener('pointermove', move);
  canvas.addEventListener('pointerup', up);
  canvas.addEventListener('pointercancel', up);
  canvas.addEventListener('wheel', wheel, { passive: false });
  canvas.addEventListener('keydown', key);
  canvas.addEventListener('contextmenu', menu);
  const resize = new ResizeObserver(redraw);
  resize.observe(canvas);
  redraw();
  return () => {
    resize.disconnect();
    canvas.removeEventListener('pointerdown', down);
    canvas.removeEventListener('pointermove', move);
    canvas.removeEventListener('pointerup', up);
    canvas.removeEventListener('pointercancel', up);
    canvas.removeEventListener('wheel', wheel);
    canvas.removeEventListener('keydown', key);
    canvas.removeEventListener('contextmenu', menu);
    if (frame) cancelAnimationFrame(frame);
    buffers.forEach((b) => gl.deleteBuffer(b));
    gl.deleteProgram(program);
  };
}
