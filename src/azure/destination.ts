/**
 * Where a blob is, and how to reach it: the three conventions Azure's own tools use.
 *   - a blob URL with a SAS token:             https://acct.blob.core.windows.net/images/gen2.vhd?sv=…&sig=…
 *   - "container/blob" with a connection string (--connection-string or AZURE_STORAGE_CONNECTION_STRING)
 *   - a blob URL without a SAS:                 DefaultAzureCredential (@azure/identity: environment,
 *                                               managed identity, Azure CLI login, …)
 * The parsed destination keeps its secret apart; `display` never holds one.
 */
import { ErrorCodes, VhdError } from '../errors.js';
import { redactSecrets, type RetryOptions } from './retry.js';

export interface BlobLocation {
  /** Account endpoint without query, e.g. https://acct.blob.core.windows.net or http://127.0.0.1:10000/devstoreaccount1 */
  accountUrl: string;
  container: string;
  blob: string;
  /** The SAS query (without "?"), when one was given. Never printed. */
  sas?: string;
  /** The connection string, when one was given. Never printed. */
  connectionString?: string;
  /** Neither SAS nor connection string: use DefaultAzureCredential. */
  tokenCredential?: boolean;
  /** For messages: "container/blob at https://host/…", without secrets. */
  display: string;
}

export interface ConnectOptions {
  connectionString?: string;
  /** Extra SDK pipeline factories (tests inject faults with one). */
  policies?: unknown[];
  retry?: RetryOptions;
}

const NAME_CONTAINER = /^(?:\$root|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$/;

export function checkContainerName(name: string): void {
  if (!NAME_CONTAINER.test(name)) {
    throw new VhdError(ErrorCodes.USAGE, `"${name}" is not a valid container name (3–63 lower-case letters, digits and single hyphens)`);
  }
}

export function checkBlobName(name: string): void {
  if (name.length === 0 || name.length > 1024 || name.endsWith('.') || name.endsWith('/')) {
    throw new VhdError(ErrorCodes.USAGE, `"${name}" is not a valid blob name (1–1024 characters, not ending in "." or "/")`);
  }
}

/** A connection string's fields, keys in lower case. */
export function connectionStringParts(cs: string): Map<string, string> {
  const parts = new Map<string, string>();
  for (const kv of cs.split(';')) {
    const i = kv.indexOf('=');
    if (i > 0) parts.set(kv.slice(0, i).trim().toLowerCase(), kv.slice(i + 1).trim());
  }
  return parts;
}

/** Account URL from a connection string (BlobEndpoint, or protocol + account + suffix). */
export function accountUrlFromConnectionString(cs: string): string {
  const parts = connectionStringParts(cs);
  if (parts.get('usedevelopmentstorage') === 'true') return 'http://127.0.0.1:10000/devstoreaccount1';
  const endpoint = parts.get('blobendpoint');
  if (endpoint) return endpoint.replace(/\/+$/, '');
  const account = parts.get('accountname');
  if (!account) throw new VhdError(ErrorCodes.USAGE, 'the connection string has neither BlobEndpoint nor AccountName');
  return `${parts.get('defaultendpointsprotocol') ?? 'https'}://${account}.blob.${parts.get('endpointsuffix') ?? 'core.windows.net'}`;
}

/**
 * Splits a URL path into account prefix, container and blob. Azure's host-style URLs
 * (acct.blob.core.windows.net/container/blob) and path-style ones used by Azurite and Azure Stack
 * (host:port/account/container/blob) are both understood: an IP or "localhost" host means path style.
 */
function splitUrl(u: URL): { accountUrl: string; rest: string[] } {
  const segments = u.pathname.split('/').filter((s) => s.length > 0).map(decodeURIComponent);
  const pathStyle = /^(\d+\.\d+\.\d+\.\d+|localhost|\[[0-9a-f:]+\])$/i.test(u.hostname) || u.hostname.endsWith('.localhost');
  if (pathStyle) {
    if (segments.length === 0) throw new VhdError(ErrorCodes.USAGE, `${u.origin}: a path-style blob URL needs the account name as its first path segment`);
    return { accountUrl: `${u.origin}/${segments[0]}`, rest: segments.slice(1) };
  }
  return { accountUrl: u.origin, rest: segments };
}

/** A URL given on the command line, split into account, path segments and SAS. */
function parseUrl(name: string): { accountUrl: string; rest: string[]; sas?: string } {
  let u: URL;
  try {
    u = new URL(name);
  } catch {
    throw new VhdError(ErrorCodes.USAGE, `${redactSecrets(name)}: not a valid URL`);
  }
  const sas = u.search.length > 1 ? u.search.slice(1) : undefined;
  return { ...splitUrl(u), sas };
}

/**
 * Parses a destination given on the command line. `name` may be a URL (with or without SAS) or
 * "container/blob" (then a connection string is required).
 */
export function parseDestination(name: string, options: ConnectOptions = {}): BlobLocation {
  if (/^https?:\/\//i.test(name)) {
    const { accountUrl, rest, sas } = parseUrl(name);
    if (rest.length < 2) throw new VhdError(ErrorCodes.USAGE, `${redactSecrets(accountUrl)}: the URL must name a container and a blob`);
    const [container, ...blobParts] = rest;
    const blob = blobParts.join('/');
    checkContainerName(container);
    checkBlobName(blob);
    if (sas && !/(^|&)sig=/.test(sas)) throw new VhdError(ErrorCodes.USAGE, `${container}/${blob}: the URL has a query but no SAS signature (sig=)`);
    return {
      accountUrl,
      container,
      blob,
      sas,
      tokenCredential: !sas,
      display: `${container}/${blob} at ${accountUrl}`,
    };
  }
  const cs = options.connectionString ?? process.env.AZURE_STORAGE_CONNECTION_STRING;
  const slash = name.indexOf('/');
  if (slash <= 0) throw new VhdError(ErrorCodes.USAGE, `"${name}": give the destination as container/blob (with a connection string) or as a blob URL`);
  const container = name.slice(0, slash);
  const blob = name.slice(slash + 1);
  checkContainerName(container);
  checkBlobName(blob);
  if (!cs) {
    throw new VhdError(ErrorCodes.USAGE, `${container}/${blob}: a container/blob destination needs --connection-string or AZURE_STORAGE_CONNECTION_STRING`);
  }
  const accountUrl = accountUrlFromConnectionString(cs);
  return { accountUrl, container, blob, connectionString: cs, display: `${container}/${blob} at ${accountUrl}` };
}

/**
 * Another blob reached the same way as `of` (same account, same credential): "NAME" is a blob in
 * the same container, "container/NAME" one in another container, and a URL stands for itself.
 */
export function siblingLocation(of: BlobLocation, name: string, options: ConnectOptions = {}): BlobLocation {
  if (/^https?:\/\//i.test(name)) return parseDestination(name, options);
  const slash = name.indexOf('/');
  const container = slash > 0 ? name.slice(0, slash) : of.container;
  const blob = slash > 0 ? name.slice(slash + 1) : name;
  checkContainerName(container);
  checkBlobName(blob);
  return { ...of, container, blob, display: `${container}/${blob} at ${of.accountUrl}` };
}

/** The URL of a blob without any secret (what may be shown or stored in metadata). */
export function publicUrl(loc: BlobLocation): string {
  return `${loc.accountUrl}/${loc.container}/${loc.blob.split('/').map(encodeURIComponent).join('/')}`;
}

/** A container given as "name" (with a connection string) or as a container URL (SAS or credential). */
export function parseContainer(name: string, options: ConnectOptions = {}): BlobLocation {
  if (/^https?:\/\//i.test(name)) {
    const { accountUrl, rest, sas } = parseUrl(name);
    if (rest.length !== 1) throw new VhdError(ErrorCodes.USAGE, `${redactSecrets(accountUrl)}: the URL must name a container (and nothing after it)`);
    checkContainerName(rest[0]);
    return { accountUrl, container: rest[0], blob: '', sas, tokenCredential: !sas, display: `${rest[0]} at ${accountUrl}` };
  }
  checkContainerName(name);
  const cs = options.connectionString ?? process.env.AZURE_STORAGE_CONNECTION_STRING;
  if (!cs) throw new VhdError(ErrorCodes.USAGE, `${name}: a container name needs --connection-string or AZURE_STORAGE_CONNECTION_STRING (or give the container URL)`);
  const accountUrl = accountUrlFromConnectionString(cs);
  return { accountUrl, container: name, blob: '', connectionString: cs, display: `${name} at ${accountUrl}` };
}
