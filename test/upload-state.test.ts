/**
 * The upload's pure parts, without Azurite: the blob-metadata schema (upload/metadata.ts) and the
 * classification of what the destination blob holds (upload/state.ts). Properties over arbitrary
 * blobs (fast-check), then one example per state.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isCompleteUpload, Meta, readRecord, type UploadRecord, writeRecord } from '../src/ops/upload/metadata.js';
import { type BlobRequest, type BlobView, chooseBase, classifyBlob, isUnfinished } from '../src/ops/upload/state.js';

const PLAN = 'p'.repeat(32);
const DIGEST = 'd'.repeat(16);
const STAMP = 's'.repeat(32);
const SIZE = 8 * 1024 * 1024 + 512;

/** Blobs as uploads leave them, and as other tools do: values drawn from the few that matter. */
const blobView: fc.Arbitrary<BlobView | undefined> = fc.option(
  fc.record({
    blobType: fc.constantFrom('PageBlob', 'BlockBlob', undefined),
    size: fc.constantFrom(SIZE, SIZE + 1024 * 1024, 512),
    metadata: fc
      .record(
        {
          [Meta.marker]: fc.constantFrom('1', '0'),
          [Meta.state]: fc.constantFrom('complete', 'uploading', 'copying'),
          [Meta.plan]: fc.constantFrom(PLAN, 'other-plan'),
          [Meta.done]: fc.constantFrom('0', '4096', String(SIZE * 2), 'garbage', '-5'),
          [Meta.digest]: fc.constantFrom(DIGEST, 'other-digest', ''),
          [Meta.stamp]: fc.constantFrom(STAMP, 'other-stamp'),
          [Meta.manifest]: fc.constantFrom('blob.vhd.x.vhdkit-manifest', ''),
          [Meta.base]: fc.constantFrom('.', 'base.vhd'),
        },
        { requiredKeys: [] },
      )
      .map((m) => Object.fromEntries(Object.entries(m).filter(([, v]) => v !== undefined)) as Record<string, string>),
  }),
  { nil: undefined },
);

const blobRequest: fc.Arbitrary<BlobRequest> = fc.record({
  planId: fc.constant(PLAN),
  digest: fc.constant(DIGEST),
  blobSize: fc.constant(SIZE),
  baseRef: fc.constantFrom(undefined, '.', 'base.vhd'),
  dirty: fc.boolean(),
  snapshot: fc.boolean(),
  overwrite: fc.boolean(),
});

describe('classifyBlob: what an upload does with the blob it finds', () => {
  it('never writes over a blob that is not its own without --overwrite', () => {
    fc.assert(
      fc.property(blobView, blobRequest, (current, r) => {
        const s = classifyBlob(current, r);
        const writesOver = (s.kind === 'create' || s.kind === 'copy') && s.over;
        const inPlace = s.kind === 'in-place';
        if (current && (writesOver || inPlace) && !r.overwrite) {
          // Only its own previous generation (--snapshot), complete, is written over unasked.
          expect(r.snapshot && r.baseRef === '.' && isCompleteUpload(current.metadata)).toBe(true);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('is "complete" exactly when the blob holds this content, complete and of the right size, and --overwrite is not given', () => {
    fc.assert(
      fc.property(blobView, blobRequest, (current, r) => {
        const same = current !== undefined && isCompleteUpload(current.metadata) && current.metadata[Meta.digest] === r.digest && current.size === r.blobSize;
        expect(classifyBlob(current, r).kind === 'complete').toBe(same && !r.overwrite);
      }),
      { numRuns: 2000 },
    );
  });

  it('resumes exactly an unfinished upload of the same plan, from a watermark inside the blob', () => {
    fc.assert(
      fc.property(blobView, blobRequest, (current, r) => {
        const s = classifyBlob(current, r);
        const resumes = s.kind === 'resume' || s.kind === 'resume-copy';
        expect(resumes).toBe(isUnfinished(current) && current!.metadata[Meta.plan] === r.planId);
        if (resumes) {
          expect(s.done).toBeGreaterThanOrEqual(0);
          expect(s.done).toBeLessThanOrEqual(r.blobSize);
          expect(s.kind === 'resume-copy').toBe(current!.metadata[Meta.state] === 'copying');
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('with no blob there: never refused, never resumed; created, or copied from a base blob', () => {
    fc.assert(
      fc.property(blobRequest, (r) => {
        const s = classifyBlob(undefined, r);
        expect(['create', 'copy', 'in-place']).toContain(s.kind);
        if (s.kind === 'create' || s.kind === 'copy') expect(s.over).toBe(false);
        if (r.baseRef === 'base.vhd') expect(s.kind).toBe('copy');
      }),
    );
  });

  const req = (o: Partial<BlobRequest> = {}): BlobRequest => ({ planId: PLAN, digest: DIGEST, blobSize: SIZE, dirty: false, snapshot: false, overwrite: false, ...o });
  const meta = (o: Record<string, string>) => ({ metadata: { [Meta.marker]: '1', ...o }, size: SIZE, blobType: 'PageBlob' });
  it.each([
    ['a new blob', undefined, req(), { kind: 'create', over: false }],
    ['a new blob with --base', undefined, req({ baseRef: 'base.vhd' }), { kind: 'copy', over: false }],
    ['a blob of another tool', { metadata: {}, size: SIZE }, req(), { kind: 'refuse', message: 'already exists; add --overwrite to replace it, or --snapshot to keep it as the previous generation' }],
    ['a blob of another tool, --overwrite', { metadata: {}, size: SIZE }, req({ overwrite: true }), { kind: 'create', over: true }],
    ['this content, complete', meta({ [Meta.state]: 'complete', [Meta.digest]: DIGEST }), req(), { kind: 'complete' }],
    ['another upload, complete', meta({ [Meta.state]: 'complete', [Meta.digest]: 'x' }), req({ snapshot: true }), { kind: 'refuse', message: 'holds another vhdkit upload; add --overwrite to replace it' }],
    ['its previous generation (--snapshot)', meta({ [Meta.state]: 'complete', [Meta.digest]: 'x' }), req({ snapshot: true, baseRef: '.' }), { kind: 'in-place' }],
    ['this plan, interrupted', meta({ [Meta.state]: 'uploading', [Meta.plan]: PLAN, [Meta.done]: '4096' }), req(), { kind: 'resume', done: 4096 }],
    ['this plan, interrupted during the copy', meta({ [Meta.state]: 'copying', [Meta.plan]: PLAN }), req({ baseRef: 'base.vhd' }), { kind: 'resume-copy', done: 0 }],
    ['another plan, interrupted', meta({ [Meta.state]: 'uploading', [Meta.plan]: 'other' }), req(), { kind: 'refuse', message: 'holds an unfinished upload of another disk; add --overwrite to replace it, or --snapshot to keep it as the previous generation' }],
    ['another disk, interrupted in place, --overwrite', meta({ [Meta.state]: 'uploading', [Meta.plan]: 'other' }), req({ snapshot: true, overwrite: true, dirty: true }), { kind: 'in-place' }],
    ['over a blob, from a base, --overwrite', { metadata: {}, size: SIZE }, req({ overwrite: true, baseRef: 'base.vhd' }), { kind: 'copy', over: true }],
  ] as Array<[string, BlobView | undefined, BlobRequest, unknown]>)('%s', (_, current, r, want) => {
    expect(classifyBlob(current, r)).toEqual(want);
  });
});

describe('chooseBase: what the new content is compared with', () => {
  const stamp = STAMP;
  it('refuses what is not a page blob, and an interrupted generation of another disk without --overwrite', () => {
    expect(chooseBase({ blobType: 'BlockBlob', metadata: {}, size: 1 }, { given: false, snapshot: false, overwrite: true, stamp })).toMatchObject({ kind: 'refuse' });
    const other = { metadata: { [Meta.marker]: '1', [Meta.state]: 'uploading', [Meta.stamp]: 'other' }, size: SIZE };
    expect(chooseBase(other, { given: false, snapshot: true, overwrite: false, stamp })).toEqual({ kind: 'refuse', message: 'holds an unfinished upload of another disk; add --overwrite to replace it' });
    expect(chooseBase(other, { given: false, snapshot: true, overwrite: true, stamp })).toEqual({ kind: 'none', dirty: true });
  });

  it('--base, the previous generation, the base an interrupted generation of this disk recorded, or nothing', () => {
    expect(chooseBase(undefined, { given: true, snapshot: false, overwrite: false, stamp })).toEqual({ kind: 'given', dirty: false });
    const complete = { metadata: { [Meta.marker]: '1', [Meta.state]: 'complete', [Meta.digest]: DIGEST, [Meta.manifest]: 'm' }, size: SIZE };
    expect(chooseBase(complete, { given: false, snapshot: true, overwrite: false, stamp })).toEqual({ kind: 'previous', dirty: false });
    expect(chooseBase(complete, { given: false, snapshot: false, overwrite: false, stamp })).toEqual({ kind: 'none', dirty: false });
    const recorded = {
      metadata: { [Meta.marker]: '1', [Meta.state]: 'uploading', [Meta.stamp]: stamp, [Meta.base]: '.', [Meta.baseDigest]: 'bd', [Meta.baseManifest]: 'a%20b', [Meta.baseChunk]: '1048576', [Meta.baseSize]: String(SIZE) },
      size: SIZE,
    };
    expect(chooseBase(recorded, { given: false, snapshot: true, overwrite: false, stamp })).toEqual({
      kind: 'recorded',
      dirty: false,
      base: { ref: '.', digest: 'bd', manifest: 'a b', uuid: '', stamp: '', chunkSize: 1048576, size: SIZE },
    });
  });
});

describe('the metadata schema', () => {
  const text = fc.string({ unit: 'grapheme', maxLength: 12 });
  const hex = (o: { minLength?: number; maxLength?: number } = {}) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), ...o });
  const record: fc.Arbitrary<UploadRecord> = fc.record(
    {
      state: fc.constantFrom('copying', 'uploading', 'complete'),
      plan: hex({ minLength: 1, maxLength: 32 }),
      done: fc.nat(),
      method: fc.constantFrom('full', 'chunks', 'sectors'),
      digest: hex({ minLength: 1, maxLength: 16 }),
      chunkSize: fc.integer({ min: 1, max: 1 << 30 }),
      manifest: text.filter((s) => s !== ''),
      virtualSize: fc.nat(),
      uuid: fc.uuid(),
      stamp: hex({ maxLength: 32 }),
      base: fc.record({ ref: text.filter((s) => s !== ''), digest: hex(), manifest: text, uuid: fc.uuid(), stamp: hex(), chunkSize: fc.nat(), size: fc.nat() }),
      differing: fc.nat(),
      data: fc.nat(),
      completed: fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
    },
    { requiredKeys: ['state', 'method', 'digest', 'chunkSize', 'virtualSize', 'uuid', 'stamp'] },
  );

  it('reads back every record it writes, names with any characters included; values are strings of ASCII', () => {
    fc.assert(
      fc.property(record, (r) => {
        const m = writeRecord(r);
        for (const [k, v] of Object.entries(m)) {
          expect(k).toMatch(/^vhdkit[a-z]*$/);
          expect(v).toMatch(/^[\x20-\x7e]*$/);
        }
        const back = readRecord(m)!;
        const want = { ...r, state: r.state === 'complete' && !r.digest ? 'uploading' : r.state };
        for (const k of Object.keys(want) as Array<keyof UploadRecord>) expect(back[k], k).toEqual(want[k]);
      }),
      { numRuns: 500 },
    );
  });

  it('a blob vhdkit did not write has no record', () => {
    expect(readRecord({})).toBeUndefined();
    expect(readRecord({ vhdkitmanifest: '1', vhdkitfor: 'x.vhd' })).toBeUndefined();
  });
});
