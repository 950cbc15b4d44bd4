import xxhash from 'xxhash-wasm';

export type XxHash = Awaited<ReturnType<typeof xxhash>>;

let loading: Promise<XxHash> | undefined;

/** The xxhash-wasm instance, instantiated once per process. */
export function loadXxhash(): Promise<XxHash> {
  loading ??= xxhash();
  return loading;
}
