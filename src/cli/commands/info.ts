import type { CommandModule } from 'yargs';
import { withChain, withGlobal, withSizeFrom } from '../options.js';
import { type GlobalArgs, printFindings, printJson, printLines, reportError } from '../output.js';
import { formatSize } from '../sizes.js';

interface Args extends GlobalArgs {
  disk: string;
  'parent-dir'?: string[];
  'size-from'?: 'footer' | 'file';
}

export const infoCommand: CommandModule<object, Args> = {
  command: 'info <disk>',
  describe: 'type, sizes, blocks, creator, UUID, geometry, parent and the whole chain',
  builder: (y) => withSizeFrom(withChain(withGlobal(y))).positional('disk', { type: 'string', demandOption: true, describe: 'a VHD file' }) as never,
  handler: async (args) => {
    try {
      const { info } = await import('../../ops/info.js');
      const d = await info(args.disk, { strict: args.strict, allowedDirs: args['parent-dir'], sizeFrom: args['size-from'] });
      if (args.json) return printJson(d);
      const lines = [
        `file:            ${d.file}`,
        `type:            ${d.type}`,
        `virtual size:    ${d.virtualSize} (${formatSize(d.virtualSize)})`,
        `original size:   ${d.originalSize} (${formatSize(d.originalSize)})${d.originalSize !== d.virtualSize ? ', as created (resized since)' : ''}`,
        `file size:       ${d.fileSize} (${formatSize(d.fileSize)})`,
      ];
      if (d.blockSize !== null) {
        lines.push(`block size:      ${d.blockSize} (${formatSize(d.blockSize)})`);
        lines.push(`blocks:          ${d.allocatedBlocks} of ${d.totalBlocks} allocated`);
      }
      lines.push(
        `creator:         ${d.creator.application} ${d.creator.version} (${d.creator.hostOs})`,
        `uuid:            ${d.uuid}`,
        `time stamp:      ${d.timestamp}`,
        `geometry:        ${d.geometry.cylinders}/${d.geometry.heads}/${d.geometry.sectorsPerTrack} (CHS size ${d.geometry.size})`,
      );
      if (d.savedState) lines.push('saved state:     yes');
      if (d.parent) {
        lines.push(`parent uuid:     ${d.parent.uuid}`, `parent name:     ${d.parent.name}`);
        for (const l of d.parent.locators) lines.push(`parent locator:  ${l.platformCode} ${l.path ?? '(unreadable)'}`);
        lines.push(`parent path:     ${d.parent.path ?? '(not found)'}`);
      }
      lines.push(`chain:           ${d.chain.map((c) => `${c.file} (${c.type})`).join(' -> ')}`);
      printLines(lines);
      printFindings(d.findings, args);
    } catch (e) {
      reportError(e, args);
    }
  },
};
