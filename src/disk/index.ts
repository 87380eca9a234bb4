export * from './image.js';
export * from './ranges.js';
export * from './source.js';
export * from './writer.js';
export * from './policy.js';
