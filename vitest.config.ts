import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: integration tests with sockets and namespaces must not starve each other.
    fileParallelism: true,
    maxWorkers: 2,
    pool: 'forks',
  },
});
