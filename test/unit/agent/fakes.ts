/**
 * Fakes of the TEE interfaces the agent's evidence providers talk to, all generated here:
 *
 * - an emulated configfs-tsm kernel: a real temporary directory plus a `DeviceFiles`
 *   implementation that performs the kernel's side effects on the same calls (mkdir populates
 *   `provider` and `generation`; writing `inblob` or `privlevel` bumps `generation`; reading
 *   `outblob`/`auxblob` produces the report and certificate table from a simulated SEV-SNP
 *   platform; rmdir removes the entry with its attribute files);
 * - an emulated Gramine `/dev/attestation` the same way, producing quotes from a simulated
 *   SGX platform;
 * - local HTTP fakes of Microsoft's attestation sidecar and of THIM on 127.0.0.1, port 0.
 */
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { expect } from "vitest";
import { ShieldError, type ShieldErrorCode } from "../../../core/errors.js";
import { parseSnpReport } from "../../../core/evidence/sevsnp/index.js";
import type { SimulatedSnpPlatform } from "../../../core/evidence/simulated/sevsnp.js";
import type { SimulatedSgxPlatform } from "../../../core/evidence/simulated/sgx.js";
import { pemToDerList } from "../../../core/x509/certificate.js";
import { SNP_CERT_GUIDS, encodeSnpCertTable } from "../../../agent/evidence/cert-table.js";
import { nodeDeviceFiles, type DeviceFiles } from "../../../agent/evidence/device-files.js";

/** Awaits `promise` and returns the ShieldError it rejects with, asserting its code. */
export async function rejectsWithCode(
  promise: Promise<unknown>,
  code: ShieldErrorCode,
): Promise<ShieldError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(ShieldError);
    expect((error as ShieldError).code).toBe(code);
    return error as ShieldError;
  }
  throw new Error(`expected a rejection with ${code}, the promise resolved`);
}

export function errnoError(code: string): NodeJS.ErrnoException {
  const error: NodeJS.ErrnoException = new Error(`${code}: emulated`);
  error.code = code;
  return error;
}

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `shield-agent-${prefix}-`));
}

/** REPORT_DATA the way the agent makes it: sha256(runtime data) then 32 zero bytes. */
export function reportDataOf(runtimeData: Uint8Array): Buffer {
  return Buffer.concat([createHash("sha256").update(runtimeData).digest(), Buffer.alloc(32)]);
}

/** The platform's chain as the host's certificate table (DER, VCEK/VLEK, ASK, ARK). */
export function certTableFor(platform: SimulatedSnpPlatform): Buffer {
  return encodeSnpCertTable([
    {
      guid: platform.signingKey === "vlek" ? SNP_CERT_GUIDS.vlek : SNP_CERT_GUIDS.vcek,
      data: platform.leaf.raw,
    },
    { guid: SNP_CERT_GUIDS.ask, data: platform.intermediate.raw },
    { guid: SNP_CERT_GUIDS.ark, data: platform.ark.raw },
  ]);
}

export interface FakeTsmKernelOptions {
  readonly platform: SimulatedSnpPlatform;
  /** `provider` content (default "sev_guest"). */
  readonly provider?: string;
  /** What reading `outblob` returns for the `inblob` written (default: a signed report). */
  readonly outblob?: (inblob: Buffer) => Buffer;
  /** What reading `auxblob` returns (default: the platform's certificate table). */
  readonly auxblob?: () => Buffer;
  /** Whether the entry has an `auxblob` file at all (default true). */
  readonly hasAuxblob?: boolean;
  /** Errno `mkdir` of an entry fails with (e.g. ENXIO: no TSM provider registered). */
  readonly mkdirErrno?: string;
  /** Errno reading `outblob` fails with (e.g. EIO from the firmware, EBUSY). */
  readonly outblobErrno?: string;
  /** How many attempts see a concurrent writer (an extra generation bump) while reading outblob. */
  readonly interfere?: number;
}

export interface FakeTsmKernel {
  /** The `report` directory. */
  readonly root: string;
  readonly files: DeviceFiles;
  /** Report entries present now. */
  entries(): Promise<string[]>;
  /** What was written to `inblob`, per entry, in order. */
  readonly inblobs: Buffer[];
  readonly privlevels: string[];
  close(): Promise<void>;
}

export async function createFakeTsmKernel(options: FakeTsmKernelOptions): Promise<FakeTsmKernel> {
  const base = await tempDir("tsm");
  const root = join(base, "tsm", "report");
  await mkdir(root, { recursive: true });
  const inblobs: Buffer[] = [];
  const privlevels: string[] = [];
  let interfere = options.interfere ?? 0;
  const isEntryAttribute = (path: string): boolean => dirname(dirname(path)) === root;
  const generationOf = async (entry: string): Promise<number> =>
    Number((await readFile(join(entry, "generation"), "utf8")).trim());
  const bump = async (entry: string): Promise<void> =>
    writeFile(join(entry, "generation"), `${(await generationOf(entry)) + 1}\n`);

  const files: DeviceFiles = {
    async mkdir(path) {
      if (dirname(path) === root && options.mkdirErrno !== undefined) throw errnoError(options.mkdirErrno);
      await nodeDeviceFiles.mkdir(path);
      if (dirname(path) !== root) return;
      // The kernel makes every attribute appear with the entry.
      await writeFile(join(path, "provider"), `${options.provider ?? "sev_guest"}\n`);
      await writeFile(join(path, "generation"), "0\n");
      await writeFile(join(path, "inblob"), "");
      await writeFile(join(path, "outblob"), "");
      await writeFile(join(path, "privlevel"), "");
      if (options.hasAuxblob ?? true) await writeFile(join(path, "auxblob"), "");
    },
    async rmdir(path) {
      // configfs removes an item's attribute files with the item.
      if (dirname(path) === root) await rm(path, { recursive: true });
      else await nodeDeviceFiles.rmdir(path);
    },
    async writeFile(path, data) {
      if (!isEntryAttribute(path)) return nodeDeviceFiles.writeFile(path, data);
      const entry = dirname(path);
      const attribute = basename(path);
      if (attribute !== "inblob" && attribute !== "privlevel") throw errnoError("EACCES");
      if (attribute === "inblob" && data.length !== 64) throw errnoError("EINVAL");
      await nodeDeviceFiles.writeFile(path, data);
      if (attribute === "inblob") inblobs.push(Buffer.from(data));
      else privlevels.push(Buffer.from(data).toString());
      await bump(entry);
    },
    async readFile(path) {
      if (!isEntryAttribute(path)) return nodeDeviceFiles.readFile(path);
      const entry = dirname(path);
      const attribute = basename(path);
      if (attribute === "outblob") {
        if (options.outblobErrno !== undefined) throw errnoError(options.outblobErrno);
        const inblob = await readFile(join(entry, "inblob"));
        if (interfere > 0) {
          interfere -= 1;
          await bump(entry);
        }
        return options.outblob?.(inblob) ?? options.platform.signReport({ reportData: inblob });
      }
      if (attribute === "auxblob") {
        if (!(options.hasAuxblob ?? true)) throw errnoError("ENOENT");
        return options.auxblob?.() ?? certTableFor(options.platform);
      }
      if (attribute === "inblob" || attribute === "privlevel") throw errnoError("EACCES");
      return nodeDeviceFiles.readFile(path);
    },
    isDirectory: (path) => nodeDeviceFiles.isDirectory(path),
  };

  return {
    root,
    files,
    entries: async () => readdir(root),
    inblobs,
    privlevels,
    close: () => rm(base, { recursive: true, force: true }),
  };
}

export interface FakeGramineOptions {
  readonly platform: SimulatedSgxPlatform;
  /** `attestation_type` content (default "dcap"); undefined-by-choice via `noAttestation`. */
  readonly attestationType?: string;
  /** No `/dev/attestation` at all. */
  readonly absent?: boolean;
  /** What reading `quote` returns for the REPORT_DATA written (default: a quote over it). */
  readonly quote?: (userReportData: Buffer) => Buffer;
}

export interface FakeGramine {
  readonly root: string;
  readonly files: DeviceFiles;
  close(): Promise<void>;
}

export async function createFakeGramine(options: FakeGramineOptions): Promise<FakeGramine> {
  const base = await tempDir("gramine");
  const root = join(base, "dev", "attestation");
  if (!(options.absent ?? false)) {
    await mkdir(root, { recursive: true });
    await writeFile(join(root, "attestation_type"), options.attestationType ?? "dcap");
    await writeFile(join(root, "user_report_data"), Buffer.alloc(64));
    await writeFile(join(root, "quote"), "");
  }
  const files: DeviceFiles = {
    ...nodeDeviceFiles,
    async writeFile(path, data) {
      if (path === join(root, "user_report_data") && data.length !== 64) throw errnoError("EINVAL");
      await nodeDeviceFiles.writeFile(path, data);
    },
    async readFile(path) {
      if (path !== join(root, "quote")) return nodeDeviceFiles.readFile(path);
      const userReportData = await readFile(join(root, "user_report_data"));
      return (
        options.quote?.(userReportData) ?? options.platform.generateQuote({ reportData: userReportData })
      );
    },
  };
  return { root, files, close: () => rm(base, { recursive: true, force: true }) };
}

export interface FakeHttpServer {
  readonly url: string;
  /** Requests seen: method, path, headers, parsed JSON body. */
  readonly requests: { method: string; path: string; headers: IncomingMessage["headers"]; body: unknown }[];
  close(): Promise<void>;
}

export type FakeRoute = (request: {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingMessage["headers"];
  readonly body: unknown;
}) => { status: number; body?: unknown; text?: string } | "hang";

/** A loopback HTTP server on a free port; `route` answers each request (or never answers). */
export async function startFakeHttpServer(route: FakeRoute): Promise<FakeHttpServer> {
  const requests: FakeHttpServer["requests"] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      let body: unknown;
      try {
        body = text === "" ? undefined : (JSON.parse(text) as unknown);
      } catch {
        body = text;
      }
      const seen = { method: req.method ?? "", path: req.url ?? "", headers: req.headers, body };
      requests.push(seen);
      const answer = route(seen);
      if (answer === "hang") return;
      const payload = answer.text ?? (answer.body === undefined ? "" : JSON.stringify(answer.body));
      res.writeHead(answer.status, {
        "content-type": answer.text === undefined ? "application/json" : "text/plain",
      });
      res.end(payload);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((error) => (error ? reject(error) : resolve()));
      }),
  };
}

/** THIM's document for a platform, as Azure serves it (tcbm upper-case, like real THIM). */
export function thimDocument(platform: SimulatedSnpPlatform, tcbm?: string): Record<string, string> {
  const report = parseSnpReport(platform.signReport());
  return {
    vcekCert: platform.leafPem,
    tcbm: tcbm ?? report.reportedTcb.raw.toUpperCase(),
    certificateChain: platform.chainPem,
    cacheControl: "86400",
  };
}

/** A THIM fake that insists on `Metadata: true`, as the real endpoint does. */
export function thimRoute(document: () => unknown): FakeRoute {
  return (request) => {
    if (request.headers["metadata"] !== "true")
      return { status: 400, body: { error: "Metadata header required" } };
    const answer = document();
    return answer === "hang" ? "hang" : { status: 200, body: answer };
  };
}

/** PEM certificates counted. */
export function certificateCount(pem: string): number {
  return pemToDerList(pem).length;
}
