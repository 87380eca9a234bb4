/**
 * Property tests: chains built from random sector writes read back exactly like a simple model
 * (a byte array per disk, overlaid child over parent by sector bitmaps), whatever the block size,
 * the fragmentation of the bitmaps or the alignment of the reads.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VhdImage } from '../src/disk/image.js';
import { DynamicWriter, FixedWriter, type ParentLink } from '../src/disk/writer.js';
import { bitmapByteSize, setBits } from '../src/format/bitmap.js';
import { MemoryResolver, MemorySink } from '../src/io/memory.js';

interface Write {
  sector: number;
  count: number;
  seed: number;
}

function pattern(sector: number, seed: number): Uint8Array {
  const out = new Uint8Array(512);
  for (let i = 0; i < 512; i++) out[i] = (sector * 131 + i * 7 + seed) & 0xff;
  return out;
}

/** Builds one disk (dynamic, or differencing when `parent` is given) holding `writes`; returns its bytes and the sectors it holds. */
async function build(
  name: string,
  virtualSize: number,
  blockSize: number,
  writes: Write[],
  uuidByte: number,
  parent?: ParentLink,
): Promise<{ bytes: Uint8Array; present: Map<number, Uint8Array> }> {
  const sink = new MemorySink(name);
  const w = await DynamicWriter.create(sink, { virtualSize, blockSize, uuid: new Uint8Array(16).fill(uuidByte), parent });
  const present = new Map<number, Uint8Array>();
  const sectorsTotal = virtualSize / 512;
  for (const wr of writes) {
    for (let s = wr.sector; s < Math.min(wr.sector + wr.count, sectorsTotal); s++) present.set(s, pattern(s, wr.seed));
  }
  const spb = blockSize / 512;
  const byBlock = new Map<number, number[]>();
  for (const s of present.keys()) {
    const b = Math.floor(s / spb);
    if (!byBlock.has(b)) byBlock.set(b, []);
    byBlock.get(b)!.push(s);
  }
  for (const [b, sectors] of [...byBlock].sort((x, y) => y[0] - x[0])) {
    // Blocks written in reverse order: the BAT is deliberately not in file order.
    const data = new Uint8Array(blockSize).fill(0xee); // garbage where bits are clear
    const bitmap = new Uint8Array(bitmapByteSize(blockSize));
    for (const s of sectors) {
      data.set(present.get(s)!, (s - b * spb) * 512);
      setBits(bitmap, s - b * spb, s - b * spb + 1);
    }
    if (!parent) {
      // In a dynamic disk every sector of an allocated block is data: unwritten ones are zeros.
      for (let k = 0; k < spb; k++) if (!present.has(b * spb + k)) data.fill(0, k * 512, k * 512 + 512);
    }
    await w.writeBlock(b, data, parent ? bitmap : undefined);
  }
  await w.finish();
  return { bytes: sink.bytes(), present };
}

const writeArb = (sectors: number) =>
  fc.record({ sector: fc.integer({ min: 0, max: sectors - 1 }), count: fc.integer({ min: 1, max: 40 }), seed: fc.integer({ min: 0, max: 255 }) });

describe('chains against a model', () => {
  it('reads every byte of a 3-level chain exactly, for random writes, block sizes and read windows', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(4096, 65536, 524288, 2097152),
        fc.integer({ min: 1, max: 12 }),
        fc.array(writeArb(4096), { maxLength: 12 }),
        fc.array(writeArb(4096), { maxLength: 25 }),
        fc.array(writeArb(4096), { maxLength: 25 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 300000 })), { minLength: 1, maxLength: 6 }),
        async (blockSize, blocksMiB, baseW, childW, grandW, windows) => {
          const virtualSize = Math.max(blockSize, Math.ceil((blocksMiB * 2 ** 20) / 2 / 512) * 512);
          const sectors = virtualSize / 512;
          const clamp = (ws: Write[]) => ws.map((w) => ({ ...w, sector: w.sector % sectors }));
          const base = await build('d/base.vhd', virtualSize, blockSize, clamp(baseW), 1);
          const link = (name: string, u: number): ParentLink => ({
            uuid: new Uint8Array(16).fill(u),
            timestamp: 0,
            name,
            locators: [{ code: 'W2ru', path: `.\\${name}` }],
          });
          const child = await build('d/child.vhd', virtualSize, blockSize, clamp(childW), 2, link('base.vhd', 1));
          const grand = await build('d/grand.vhd', virtualSize, blockSize, clamp(grandW), 3, link('child.vhd', 2));
          // The model: newest layer wins per sector.
          const model = new Uint8Array(virtualSize);
          for (const layer of [base, child, grand]) for (const [s, bytes] of layer.present) model.set(bytes, s * 512);

          const files = new Map([
            ['d/base.vhd', base.bytes],
            ['d/child.vhd', child.bytes],
            ['d/grand.vhd', grand.bytes],
          ]);
          const img = await VhdImage.open(new MemorySink('d/grand.vhd', grand.bytes), { resolver: new MemoryResolver(files) });
          expect(img.chain).toHaveLength(3);
          expect(img.allFindings.filter((f) => f.severity === 'error')).toEqual([]);
          const all = new Uint8Array(virtualSize);
          await img.read(all, 0);
          expect(Buffer.compare(all, model)).toBe(0);
          for (const [start, len] of windows) {
            const a = start % virtualSize;
            const n = Math.min(len, virtualSize - a);
            const part = new Uint8Array(n);
            await img.read(part, a);
            expect(Buffer.compare(part, model.subarray(a, a + n))).toBe(0);
          }
          // Sector-exact extents of the child are exactly its written sectors.
          const own = await img.ownSectorRanges();
          const fromModel = new Set(grand.present.keys());
          let count = 0;
          for (const [a, b] of own) for (let s = a / 512; s < b / 512; s++, count++) expect(fromModel.has(s)).toBe(true);
          expect(count).toBe(fromModel.size);
          await img.close();
        },
      ),
      { numRuns: 60 },
    );
  });

  it('reads a fixed disk written at random offsets like the model', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 64 }), fc.array(writeArb(2048), { maxLength: 20 }), async (kib, writes) => {
        const virtualSize = kib * 16 * 1024;
        const sink = new MemorySink('f.vhd');
        const w = await FixedWriter.create(sink, { virtualSize, uuid: new Uint8Array(16).fill(9) });
        const model = new Uint8Array(virtualSize);
        for (const wr of writes) {
          for (let s = wr.sector; s < wr.sector + wr.count && s * 512 < virtualSize; s++) {
            const p = pattern(s, wr.seed);
            model.set(p, s * 512);
            await w.write(p, s * 512);
          }
        }
        await w.finish();
        const img = await VhdImage.open(new MemorySink('f.vhd', sink.bytes()));
        expect(img.type).toBe('fixed');
        expect(img.findings).toEqual([]);
        const all = new Uint8Array(virtualSize);
        await img.read(all, 0);
        expect(Buffer.compare(all, model)).toBe(0);
      }),
      { numRuns: 40 },
    );
  });
});
