/**
 * The local journal of an upload: one small JSON file per destination in the journal folder, with
 * the plan's identity, its watermark and the blob lease the upload holds. A rerun after a kill
 * resumes from the higher of this watermark and the one in the blob's metadata, and takes back the
 * lease of a killed run of this machine at once.
 */
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeJsonDurably } from '../../io/durable.js';
import { alive } from '../journal.js';

export function defaultJournalDir(): string {
  const state = process.env.XDG_STATE_HOME || path.join(os.homedir(), '.local', 'state');
  return path.join(state, 'vhdkit', 'uploads');
}

interface LocalJournal {
  kind: 'vhdkit-upload';
  destination: string;
  plan: string;
  done: number;
  /** The id of the blob lease this upload holds (or held, when it was killed), and its process. */
  lease?: string;
  pid?: number;
  host?: string;
}

export class UploadJournal {
  readonly file: string;
  /**
   * The lease id to propose: the one a killed run of this machine held (its process gone), else a
   * new one. An upload to the same blob running now keeps its id to itself: this one then meets its
   * lease and stops (LOCKED). A journal folder shared by several machines (a home on NFS) only lends
   * ids between runs of one host.
   */
  leaseId: string;
  /** The id came from a killed run: switch the lease to a fresh one as soon as it is held (two reruns may have read it). */
  orphan: boolean;
  /** What a previous run left (read once: from here on only this run writes the file). */
  private readonly found: LocalJournal | undefined;
  constructor(dir: string, destination: string) {
    this.file = uploadJournalPath(dir, destination);
    const j = (this.found = this.load());
    this.orphan =
      typeof j?.lease === 'string' && /^[0-9a-f-]{36}$/.test(j.lease) && j.host === os.hostname() && typeof j.pid === 'number' && j.pid !== process.pid && !alive(j.pid);
    this.leaseId = this.orphan ? j!.lease! : randomUUID();
  }
  private load(): LocalJournal | undefined {
    try {
      const j = JSON.parse(fs.readFileSync(this.file, 'utf8')) as LocalJournal;
      return j.kind === 'vhdkit-upload' ? j : undefined;
    } catch {
      return undefined;
    }
  }
  /** The watermark a previous run of this plan saved (0 if none). */
  read(plan: string): number {
    const j = this.found;
    return j && j.plan === plan && Number.isSafeInteger(j.done) ? j.done : 0;
  }
  write(destination: string, plan: string, done: number): void {
    writeJsonDurably(this.file, { kind: 'vhdkit-upload', destination, plan, done, lease: this.leaseId, pid: process.pid, host: os.hostname() } satisfies LocalJournal);
  }
  remove(): void {
    fs.rmSync(this.file, { force: true });
  }
}


/** The local journal of uploads to `destination` (a blob URL without its SAS). */
export function uploadJournalPath(dir: string, destination: string): string {
  return path.join(dir, `${createHash('sha256').update(destination).digest('hex').slice(0, 32)}.json`);
}
