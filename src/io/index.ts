export * from './types.js';
export * from './aligned.js';
export * from './memory.js';
export * from './file.js';
