/**
 * One error class per failure family, each with a stable code (undici's pattern).
 * Text says what was expected, what came, and what to do.
 */
export const ErrorCode = {
  /** A QEMU migration stream (or converge frame) is malformed. */
  STREAM_MALFORMED: 'VMS_ERR_STREAM_MALFORMED',
  /** A QEMU migration stream ended before it was complete. */
  STREAM_TRUNCATED: 'VMS_ERR_STREAM_TRUNCATED',
  /** A well-formed record this implementation does not handle (XBZRLE, COMPRESS_PAGE, HOOK, COMMAND). */
  STREAM_UNSUPPORTED: 'VMS_ERR_STREAM_UNSUPPORTED',
  /** A converge channel failed: peer closed, checksum mismatch, missing content. */
  CONVERGE: 'VMS_ERR_CONVERGE',
  /** A rebuilt VM is not identical to its source. */
  VERIFY: 'VMS_ERR_VERIFY',
  /** Bad configuration or input given by the user. */
  CONFIG: 'VMS_ERR_CONFIG',
  /** A plan cannot be made: capacity shortfall, contradictory constraints. */
  PLAN: 'VMS_ERR_PLAN',
  /** The multicast data plane failed. */
  SCATTER: 'VMS_ERR_SCATTER',
  /** QEMU / QMP failure. */
  QEMU: 'VMS_ERR_QEMU',
  /** A timeout waiting for a peer or a process. */
  TIMEOUT: 'VMS_ERR_TIMEOUT',
  /** An operation was cancelled. */
  CANCELLED: 'VMS_ERR_CANCELLED',
  /** A peer (coordinator, agent) cannot be reached over HTTP. */
  UNREACHABLE: 'VMS_ERR_UNREACHABLE',
  /** The bearer token is missing or wrong. */
  UNAUTHORIZED: 'VMS_ERR_UNAUTHORIZED',
  /** A job, agent or VM named in a request does not exist. */
  NOT_FOUND: 'VMS_ERR_NOT_FOUND',
  /** The request conflicts with current state (a VM already in a job, a job already finished). */
  CONFLICT: 'VMS_ERR_CONFLICT',
  /** An agent is unknown, lost, has the wrong role, or answered with an error. */
  AGENT: 'VMS_ERR_AGENT',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class VmsError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VmsError';
    this.code = code;
  }
}

/** A stream error always names the byte offset where decoding stopped. */
export class StreamError extends VmsError {
  readonly offset: number;
  constructor(code: ErrorCode, offset: number, message: string, options?: { cause?: unknown }) {
    super(code, `${message} (at stream offset ${offset})`, options);
    this.name = 'StreamError';
    this.offset = offset;
  }
}

export function isVmsError(e: unknown): e is VmsError {
  return e instanceof VmsError;
}
