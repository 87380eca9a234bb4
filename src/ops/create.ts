/** `create`: a new empty fixed or dynamic disk, or a new differencing child of a parent. */
import crypto from 'node:crypto';
import path from 'node:path';
import { ErrorCodes, VhdError, withCodedErrors } from '../errors.js';
import { blockSizeLike, DEFAULT_DYNAMIC_BLOCK_SIZE, DynamicWriter, FixedWriter, type ParentLink } from '../disk/writer.js';
import { uuidToString, uuidV4 } from '../format/uuid.js';
import { writeAtomically } from '../io/file.js';
import { guardOutputs } from '../io/paths.js';
import { inputRoles, openDisk } from './open.js';

export interface CreateOptions {
  /** Virtual size in bytes (not for differencing disks: they take the parent's). */
  size?: number;
  type?: 'fixed' | 'dynamic';
  blockSize?: number;
  /** Make a differencing child of this disk. */
  parent?: string;
  /** Replace an existing output file. */
  force?: boolean;
  /** UUID for the new disk (random by default). */
  uuid?: Uint8Array;
}

export interface CreateResult {
  file: string;
  type: 'fixed' | 'dynamic' | 'differencing';
  virtualSize: number;
  blockSize: number | null;
  uuid: string;
  parent: { file: string; uuid: string } | null;
}

export function newUuid(): Uint8Array {
  return uuidV4(crypto.randomBytes(16));
}

/**
 * The parent link a child at `childPath` uses for `parentPath`: the parent's file name in the
 * header, then a relative Windows path (W2ru), the absolute path (W2ku) and a relative file URL
 * (MacX), so Hyper-V, blktap and vhdkit all find it, and the pair can move together.
 */
export function parentLinkFor(childPath: string, parentPath: string, parentUuid: Uint8Array, parentTimestamp: number): ParentLink {
  const absParent = path.resolve(parentPath);
  let rel = path.relative(path.dirname(path.resolve(childPath)), absParent);
  if (!rel.startsWith('..')) rel = `./${rel}`;
  return {
    uuid: parentUuid,
    timestamp: parentTimestamp,
    name: path.basename(absParent),
    locators: [
      { code: 'W2ru', path: rel.split('/').join('\\') },
      { code: 'W2ku', path: absParent },
      { code: 'MacX', path: rel },
    ],
  };
}

export function create(file: string, options: CreateOptions): Promise<CreateResult> {
  return withCodedErrors(() => createDisk(file, options));
}

async function createDisk(file: string, options: CreateOptions): Promise<CreateResult> {
  const uuid = options.uuid ?? newUuid();
  if (options.parent !== undefined) {
    if (options.size !== undefined || options.type !== undefined) {
      throw new VhdError(ErrorCodes.USAGE, 'a differencing disk takes its size and type from the parent: drop --size and --type');
    }
    guardOutputs([{ path: file, role: 'new disk' }], [{ path: options.parent, role: 'parent' }]);
    const parent = await openDisk(options.parent);
    try {
      guardOutputs([{ path: file, role: 'new disk' }], inputRoles(parent, options.parent, 'parent'));
      const errors = parent.allFindings.filter((f) => f.severity === 'error');
      if (errors.length > 0) {
        // An interrupted merge explains every other finding on that disk: name it first.
        const first = errors.find((f) => f.code === ErrorCodes.LOCKED || f.code === ErrorCodes.MERGE_PENDING) ?? errors[0];
        const busy = first.code === ErrorCodes.LOCKED || first.code === ErrorCodes.MERGE_PENDING;
        throw new VhdError(first.code, `${busy ? 'cannot use the parent' : 'the parent is damaged'}: ${first.message}`, { file: options.parent });
      }
      const blockSize = options.blockSize ?? blockSizeLike(parent);
      const link = parentLinkFor(file, options.parent, parent.footer.uniqueId, parent.footer.timestamp);
      await writeAtomically(
        file,
        async (sink) => {
          const w = await DynamicWriter.create(sink, { virtualSize: parent.virtualSize, blockSize, uuid, parent: link });
          await w.finish();
        },
        { overwrite: options.force },
      );
      return {
        file,
        type: 'differencing',
        virtualSize: parent.virtualSize,
        blockSize,
        uuid: uuidToString(uuid),
        parent: { file: options.parent, uuid: parent.uuid },
      };
    } finally {
      await parent.close();
    }
  }
  if (options.size === undefined) throw new VhdError(ErrorCodes.USAGE, 'give the virtual size with --size (or a parent with --parent)');
  const type = options.type ?? 'dynamic';
  const size = options.size;
  if (type === 'fixed') {
    await writeAtomically(
      file,
      async (sink) => {
        const w = await FixedWriter.create(sink, { virtualSize: size, uuid });
        await w.finish();
      },
      { overwrite: options.force },
    );
    return { file, type, virtualSize: size, blockSize: null, uuid: uuidToString(uuid), parent: null };
  }
  const blockSize = options.blockSize ?? DEFAULT_DYNAMIC_BLOCK_SIZE;
  await writeAtomically(
    file,
    async (sink) => {
      const w = await DynamicWriter.create(sink, { virtualSize: size, blockSize, uuid });
      await w.finish();
    },
    { overwrite: options.force },
  );
  return { file, type, virtualSize: size, blockSize, uuid: uuidToString(uuid), parent: null };
}
