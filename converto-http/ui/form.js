// A form built from a route's options JSON Schema (as /v1/formats publishes it), and a check of
// the values against the same schema before submitting. The server's check stays the
// authority: its problem `detail` is shown when it refuses what this lets through.

let serial = 0;

/** The schema a form field is built from: for `oneOf`, its string branch (a text field). */
function fieldSchema(schema) {
  if (Array.isArray(schema.oneOf)) {
    return schema.oneOf.find((s) => s.type === 'string') || schema.oneOf[0];
  }
  return schema;
}

function label(name) {
  return name.replace(/[_-]+/g, ' ').replace(/^./, (c) => c.toUpperCase());
}

/**
 * Builds the fields of `schema` into `container`; returns `read()`, which gives
 * `{ options, errors }` (errors: messages by option name).
 */
export function buildForm(container, schema) {
  container.replaceChildren();
  const props = schema?.properties || {};
  const names = Object.keys(props);
  if (!names.length) {
    const p = document.createElement('p');
    p.className = 'muted';
    p.textContent = 'This route takes no options.';
    container.append(p);
    return () => ({ options: {}, errors: {} });
  }
  const inputs = {};
  for (const name of names) {
    const full = props[name];
    const s = fieldSchema(full);
    const id = `opt-${++serial}`;
    const row = document.createElement('div');
    row.className = 'field';
    const lab = document.createElement('label');
    lab.htmlFor = id;
    lab.textContent = full.title || label(name);
    let input;
    if (s.enum) {
      input = document.createElement('select');
      const none = new Option('(default)', '');
      input.add(none);
      for (const v of s.enum) input.add(new Option(String(v), String(v)));
      if (s.default !== undefined) input.value = String(s.default);
    } else if (s.type === 'boolean') {
      input = document.createElement('input');
      input.type = 'checkbox';
      input.checked = s.default === true;
    } else {
      input = document.createElement('input');
      if (s.type === 'integer' || s.type === 'number') {
        input.type = 'number';
        input.inputMode = s.type === 'integer' ? 'numeric' : 'decimal';
        if (s.minimum !== undefined) input.min = String(s.minimum);
        if (s.maximum !== undefined) input.max = String(s.maximum);
        input.step = s.type === 'integer' ? '1' : 'any';
      } else {
        input.type = 'text';
        if (s.maxLength !== undefined) input.maxLength = s.maxLength;
      }
      const example = full.examples?.[0] ?? s.default;
      if (example !== undefined) input.placeholder = String(example);
    }
    input.id = id;
    input.name = name;
    const help = document.createElement('small');
    help.id = `${id}-help`;
    help.textContent = full.description || s.description || '';
    const error = document.createElement('small');
    error.id = `${id}-error`;
    error.className = 'error';
    error.setAttribute('role', 'alert');
    input.setAttribute('aria-describedby', `${help.id} ${error.id}`);
    if (s.type === 'boolean') {
      row.classList.add('check');
      row.append(input, lab, help, error);
    } else {
      row.append(lab, input, help, error);
    }
    container.append(row);
    inputs[name] = { input, schema: full, field: s, error };
  }
  return () => {
    const options = {};
    const errors = {};
    for (const [name, { input, field }] of Object.entries(inputs)) {
      let value;
      if (field.type === 'boolean') {
        // Only what differs from the default is sent.
        if (input.checked !== (field.default === true)) value = input.checked;
      } else if (input.value.trim() !== '') {
        const text = input.value.trim();
        if (field.type === 'integer' || field.type === 'number') {
          value = Number(text);
        } else {
          value = text;
        }
      }
      if (value !== undefined) options[name] = value;
    }
    Object.assign(errors, validate(schema, options));
    for (const [name, { input, error }] of Object.entries(inputs)) {
      error.textContent = errors[name] || '';
      input.setAttribute('aria-invalid', errors[name] ? 'true' : 'false');
    }
    return { options, errors };
  };
}

/** Checks `value` against one (sub)schema; returns a message or ''. */
function check(s, value) {
  if (Array.isArray(s.oneOf)) {
    const passing = s.oneOf.filter((b) => !check(b, value));
    return passing.length === 1 ? '' : check(fieldSchema(s), value) || 'not a valid value';
  }
  if (s.enum && !s.enum.includes(value)) return `one of ${s.enum.join(', ')}`;
  switch (s.type) {
    case 'integer':
      if (!Number.isInteger(value)) return 'a whole number';
      break;
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) return 'a number';
      break;
    case 'boolean':
      if (typeof value !== 'boolean') return 'true or false';
      break;
    case 'string':
      if (typeof value !== 'string') return 'text';
      if (s.maxLength !== undefined && value.length > s.maxLength) {
        return `at most ${s.maxLength} characters`;
      }
      if (s.pattern && !new RegExp(s.pattern, 'u').test(value)) return 'not in the expected form';
      break;
    case 'array':
      if (!Array.isArray(value)) return 'a list';
      if (s.minItems !== undefined && value.length < s.minItems) return 'too few items';
      if (s.maxItems !== undefined && value.length > s.maxItems) return 'too many items';
      for (const item of value) if (s.items && check(s.items, item)) return check(s.items, item);
      break;
    default:
  }
  if (typeof value === 'number') {
    if (s.minimum !== undefined && value < s.minimum) return `at least ${s.minimum}`;
    if (s.maximum !== undefined && value > s.maximum) return `at most ${s.maximum}`;
  }
  return '';
}

/** Errors by option name (`''` for the whole object) of `options` against `schema`. */
export function validate(schema, options) {
  const errors = {};
  if (!schema) return errors;
  const props = schema.properties || {};
  for (const [name, value] of Object.entries(options)) {
    const s = props[name];
    if (!s) {
      if (schema.additionalProperties === false) errors[name] = 'not an option of this route';
      continue;
    }
    const message = check(s, value);
    if (message) errors[name] = `must be ${message}`;
  }
  for (const [name, dependent] of Object.entries(schema.dependentSchemas || {})) {
    if (!(name in options)) continue;
    const conflicts = (dependent.not?.anyOf || [])
      .flatMap((b) => b.required || [])
      .filter((other) => other in options);
    for (const other of conflicts) errors[other] = `cannot be combined with ${name}`;
  }
  return errors;
}
