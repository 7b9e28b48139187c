// ESM entry point: the same runtime as index.js.
import runtime from './index.js';

export const { serve, Job, wire, MIN_VERSION, MAX_VERSION, ProtocolError } = runtime;
export default runtime;
