/**
 * Parent locator data: the paths a differencing disk gives for its parent.
 *   W2ku  absolute Windows path, UTF-16LE        W2ru  relative Windows path, UTF-16LE
 *   MacX  file URL, UTF-8 (blktap writes "file://./base.vhd")
 *   Wi2k / Wi2r  deprecated ANSI forms (read only)   Mac  Mac OS alias record (not a path; skipped)
 */
export type PlatformCode = 'W2ku' | 'W2ru' | 'MacX' | 'Wi2k' | 'Wi2r' | 'Mac ';

export const KNOWN_PLATFORMS: readonly string[] = ['W2ku', 'W2ru', 'MacX', 'Wi2k', 'Wi2r', 'Mac '];

/** Whether a locator of this code names a path relative to the child. */
export function isRelativeCode(code: string): boolean {
  return code === 'W2ru' || code === 'Wi2r';
}

/**
 * Bytes reserved for a locator's data. Windows and blktap write `platformDataSpace` in bytes, the
 * specification and Virtual PC in sectors. A value below 512 cannot be a byte count of a sector
 * aligned area, so it is sectors; anything else is bytes.
 */
export function locatorSpaceBytes(platformDataSpace: number): number {
  return platformDataSpace < 512 ? platformDataSpace * 512 : platformDataSpace;
}

export function decodeUtf16LE(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i + 1 < bytes.length; i += 2) {
    const c = bytes[i] | (bytes[i + 1] << 8);
    if (c === 0) break;
    s += String.fromCharCode(c);
  }
  return s;
}

export function encodeUtf16LE(text: string): Uint8Array {
  const out = new Uint8Array(text.length * 2);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    out[i * 2] = c & 0xff;
    out[i * 2 + 1] = c >>> 8;
  }
  return out;
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

/** Returns the path a locator's data names, or undefined if the code is not a path format. Throws on undecodable data. */
export function decodeLocatorPath(code: string, data: Uint8Array): string | undefined {
  switch (code) {
    case 'W2ku':
    case 'W2ru':
      return decodeUtf16LE(data);
    case 'Wi2k':
    case 'Wi2r': {
      const nul = data.indexOf(0);
      return utf8Decoder.decode(nul >= 0 ? data.subarray(0, nul) : data);
    }
    case 'MacX': {
      const nul = data.indexOf(0);
      const text = utf8Decoder.decode(nul >= 0 ? data.subarray(0, nul) : data);
      return fileUrlToPath(text);
    }
    default:
      return undefined;
  }
}

export function encodeLocatorPath(code: 'W2ku' | 'W2ru' | 'MacX', path: string): Uint8Array {
  if (code === 'MacX') return utf8Encoder.encode(pathToFileUrl(path));
  return encodeUtf16LE(path);
}

/** "file://./base.vhd" → "./base.vhd"; "file:///srv/a%20b.vhd" → "/srv/a b.vhd"; "file://localhost/x" → "/x". */
export function fileUrlToPath(url: string): string {
  let rest = url;
  if (/^file:\/\//i.test(rest)) rest = rest.slice(7);
  else if (/^file:/i.test(rest)) rest = rest.slice(5);
  if (rest.toLowerCase().startsWith('localhost/')) rest = rest.slice(9);
  if (/^\/[A-Za-z]:\//.test(rest)) rest = rest.slice(1); // file:///C:/x.vhd → C:/x.vhd
  try {
    return decodeURIComponent(rest);
  } catch {
    return rest;
  }
}

export function pathToFileUrl(path: string): string {
  let p = path.replace(/\\/g, '/');
  // A drive letter is a path, not a host: C:/x.vhd → file:///C:/x.vhd.
  const drive = /^[A-Za-z]:\//.test(p) ? `/${p.slice(0, 2)}` : '';
  if (drive) p = p.slice(2);
  const encoded = p
    .split('/')
    .map((seg) => encodeURIComponent(seg))
    .join('/');
  return `file://${drive}${encoded}`;
}

/**
 * Normalises a Windows or POSIX path from a locator to forward slashes.
 * "C:\\images\\base.vhd" → "C:/images/base.vhd"; ".\\base.vhd" → "./base.vhd".
 */
export function toSlashPath(path: string): string {
  return path.replace(/\\/g, '/');
}

/** The last component of a Windows or POSIX path. */
export function baseName(path: string): string {
  const p = toSlashPath(path);
  const i = p.lastIndexOf('/');
  return i >= 0 ? p.slice(i + 1) : p.replace(/^[A-Za-z]:/, '');
}

/** Whether a slash path is absolute (POSIX root, a drive letter, or a UNC share). */
export function isAbsoluteSlashPath(path: string): boolean {
  return path.startsWith('/') || /^[A-Za-z]:\//.test(path);
}
