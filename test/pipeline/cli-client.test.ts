/**
 * The CLI's API client following a job's events while the coordinator cannot be reached: it
 * says so once, keeps trying for the time it was given, then fails with the reason.
 */
import { createServer, type AddressInfo } from 'node:net';
import { expect, it } from 'vitest';
import { ApiClient } from '../../src/cli/client.js';

it('says once that the coordinator is unreachable, retries for reconnectForMs, then fails', async () => {
  // A port nothing listens on: take one, then free it.
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  const client = new ApiClient(`http://127.0.0.1:${port}`, 't'.repeat(16));
  const told: Array<{ message: string; forMs: number }> = [];
  await expect(client.events('j-x', () => {}, { reconnectForMs: 2500, onUnreachable: (err, forMs) => told.push({ message: err.message, forMs }) })).rejects.toThrow(/cannot reach the coordinator/);
  expect(told).toHaveLength(1);
  expect(told[0]).toMatchObject({ forMs: 2500 });
  expect(told[0]!.message).toMatch(/ECONNREFUSED/);
});
