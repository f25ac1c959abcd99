import { inspect } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { ShieldError, type ShieldErrorCode } from "../../../core/errors.js";
import {
  createMaaTokenIssuer,
  staticSigningKeys,
  validateMaaToken,
  maaTokenHash,
  type MaaTokenValidationOptions,
  type SigningKeyResolver,
} from "../../../core/token/index.js";
import { b64url, createTestSigner, sha256Hex, type TestSigner } from "./helpers.js";

const ISSUER = "https://sharedeus.eus.attest.azure.net";
const AT = new Date("2026-03-01T00:00:00Z");
const IAT = AT.getTime() / 1000;

const runtimeKeys = [{ e: "AQAB", key_ops: ["encrypt"], kid: "runtime-key-1", kty: "RSA", n: "u6Vz9kZ4nQ" }];
const runtimeData = Buffer.from(JSON.stringify({ keys: runtimeKeys, nonce: "n-1" }));

function sevSnpClaims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    exp: IAT + 28800,
    iat: IAT,
    iss: ISSUER,
    jti: "ab".repeat(32),
    nbf: IAT,
    nonce: "challenge-42",
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-compliance-status": "azure-compliant-uvm",
    // MAA serialises members in its own order; the validator must not care.
    "x-ms-runtime": {
      keys: [{ kid: "runtime-key-1", kty: "RSA", n: "u6Vz9kZ4nQ", e: "AQAB", key_ops: ["encrypt"] }],
      nonce: "n-1",
    },
    "x-ms-sevsnpvm-hostdata": "fe".repeat(32),
    "x-ms-sevsnpvm-is-debuggable": false,
    "x-ms-sevsnpvm-reportdata": sha256Hex(runtimeData) + "0".repeat(64),
    "x-ms-sevsnpvm-vmpl": 0,
    "x-ms-ver": "1.0",
    ...overrides,
  };
}

function sgxClaims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    exp: IAT + 28800,
    iat: IAT,
    iss: ISSUER,
    nbf: IAT,
    "x-ms-attestation-type": "sgx",
    "x-ms-sgx-ehd": b64url(runtimeData),
    "x-ms-sgx-is-debuggable": false,
    "x-ms-sgx-mrenclave": "f5".repeat(32),
    "x-ms-sgx-mrsigner": "a5".repeat(32),
    // The upper 32 bytes are the enclave's own business.
    "x-ms-sgx-report-data": sha256Hex(runtimeData).toUpperCase() + "11".repeat(32),
    "x-ms-ver": "1.0",
    ...overrides,
  };
}

let signer: TestSigner;
let attacker: TestSigner;
let keys: SigningKeyResolver;
let header: { alg: string; jku: string; kid: string; typ: string };

beforeAll(() => {
  signer = createTestSigner(ISSUER);
  attacker = createTestSigner("https://attacker.example");
  keys = staticSigningKeys(signer.certsDocument());
  header = { alg: "RS256", jku: `${ISSUER}/certs`, kid: signer.kid, typ: "JWT" };
});

const options = (extra: Partial<MaaTokenValidationOptions> = {}): MaaTokenValidationOptions => ({
  keys,
  issuer: ISSUER,
  at: AT,
  ...extra,
});

/** Runs validation and returns the ShieldError it must fail with. */
async function failure(token: string, extra: Partial<MaaTokenValidationOptions> = {}): Promise<ShieldError> {
  try {
    await validateMaaToken(token, options(extra));
  } catch (error) {
    expect(error).toBeInstanceOf(ShieldError);
    const shieldError = error as ShieldError;
    // No part of the token may leak into what crosses a boundary.
    const exposed = JSON.stringify(shieldError.toJSON()) + shieldError.message;
    for (const part of token.split("."))
      if (part.length >= 12) expect(exposed).not.toContain(part.slice(0, 12));
    return shieldError;
  }
  throw new Error("validation unexpectedly succeeded");
}

async function expectCode(
  token: string,
  code: ShieldErrorCode,
  extra: Partial<MaaTokenValidationOptions> = {},
) {
  expect((await failure(token, extra)).code).toBe(code);
}

describe("validateMaaToken: tokens that pass", () => {
  it("accepts a SEV-SNP container token and returns its header, claims, type and hash", async () => {
    const token = signer.sign(header, sevSnpClaims());
    const result = await validateMaaToken(
      token,
      options({ expectedNonce: "challenge-42", runtimeData, requireAttestationType: "sevsnpvm" }),
    );
    expect(result.header).toEqual(header);
    expect(result.claims["x-ms-sevsnpvm-hostdata"]).toBe("fe".repeat(32));
    expect(result.claims.iss).toBe(ISSUER);
    expect(result.attestationType).toBe("sevsnpvm");
    expect(result.tokenHash).toBe(sha256Hex(token));
    expect(result.tokenHash).toBe(maaTokenHash(token));
    expect((JSON.parse(JSON.stringify(result)) as { tokenHash: string }).tokenHash).toBe(sha256Hex(token));
    // The result keeps no visible copy of the token.
    expect(inspect(result, { depth: 5 })).not.toContain(token.split(".")[2]!.slice(0, 24));
    expect(JSON.stringify(result)).not.toContain(token.split(".")[2]!.slice(0, 24));
  });

  it("accepts an SGX token whose report data starts with the runtime-data hash (any hex case)", async () => {
    const token = signer.sign(header, sgxClaims());
    const result = await validateMaaToken(token, options({ runtimeData, requireAttestationType: "sgx" }));
    expect(result.attestationType).toBe("sgx");
    expect(result.claims["x-ms-sgx-mrenclave"]).toBe("f5".repeat(32));
  });

  it("reads the TEE claims of a CVM guest token from x-ms-isolation-tee", async () => {
    const tee = {
      "x-ms-attestation-type": "sevsnpvm",
      "x-ms-runtime": { keys: runtimeKeys },
      "x-ms-sevsnpvm-reportdata": sha256Hex(runtimeData) + "0".repeat(64),
    };
    const cvmRuntime = Buffer.from(JSON.stringify({ keys: runtimeKeys }));
    tee["x-ms-sevsnpvm-reportdata"] = sha256Hex(cvmRuntime) + "0".repeat(64);
    const claims = {
      exp: IAT + 60,
      iss: ISSUER,
      "x-ms-attestation-type": "azurevm",
      "x-ms-isolation-tee": tee,
    };
    const result = await validateMaaToken(
      signer.sign(header, claims),
      options({ runtimeData: cvmRuntime, requireAttestationType: "sevsnpvm" }),
    );
    expect(result.attestationType).toBe("sevsnpvm");
  });

  it("needs no typ, jku, nbf, pinned issuer or runtime data", async () => {
    const { nbf: _nbf, ...claims } = sevSnpClaims();
    const token = signer.sign({ alg: "RS256", kid: signer.kid }, claims);
    await expect(validateMaaToken(token, { keys, at: AT })).resolves.toMatchObject({
      attestationType: "sevsnpvm",
    });
  });

  it("ignores one trailing slash on either issuer", async () => {
    await validateMaaToken(signer.sign(header, sevSnpClaims()), options({ issuer: `${ISSUER}/` }));
    await validateMaaToken(signer.sign(header, sevSnpClaims({ iss: `${ISSUER}/` })), options());
  });

  it("accepts a nonce echoed as a number", async () => {
    const token = signer.sign(header, sevSnpClaims({ nonce: 7394904505194784 }));
    await validateMaaToken(token, options({ expectedNonce: "7394904505194784" }));
  });
});

describe("validateMaaToken check 1: size and shape", () => {
  let good: string;
  beforeAll(() => {
    good = signer.sign(header, sevSnpClaims());
  });

  it.each([
    ["two parts", () => good.split(".").slice(0, 2).join(".")],
    ["four parts", () => `${good}.${good.split(".")[2]}`],
    ["empty header", () => `.${good.split(".").slice(1).join(".")}`],
    ["empty payload", () => `${good.split(".")[0]}..${good.split(".")[2]}`],
    ["a character outside base64url in the header", () => `!${good.slice(1)}`],
    ["a padded signature", () => `${good}=`],
    ["a header of length 4n+1", () => `${good.split(".")[0]}A.${good.split(".").slice(1).join(".")}`],
    ["a header that is not JSON", () => `${b64url("{alg:RS256}")}.${good.split(".").slice(1).join(".")}`],
    ["a header that is a JSON array", () => `${b64url('["RS256"]')}.${good.split(".").slice(1).join(".")}`],
    ["an empty string", () => ""],
  ])("rejects %s", async (_name, make) => {
    await expectCode(make(), "ERR_TOKEN_MALFORMED");
  });

  it("rejects a token over the size limit before decoding it", async () => {
    const resolver: SigningKeyResolver = {
      getKey: () => {
        throw new Error("must not be asked");
      },
    };
    await expectCode(good, "ERR_TOKEN_MALFORMED", { maxTokenBytes: good.length - 1, keys: resolver });
    await validateMaaToken(good, options({ maxTokenBytes: good.length }));
    const huge = signer.sign(header, sevSnpClaims({ padding: "x".repeat(64 * 1024) }));
    await expectCode(huge, "ERR_TOKEN_MALFORMED");
  });

  it("rejects a signed payload that is not base64url, is not JSON, or is not an object", async () => {
    const h = good.split(".")[0]!;
    await expectCode(signer.signInput(`${h}.eyJh*ZSI6MX0`), "ERR_TOKEN_MALFORMED");
    await expectCode(signer.sign(header, "not json"), "ERR_TOKEN_MALFORMED");
    await expectCode(signer.sign(header, "[1,2]"), "ERR_TOKEN_MALFORMED");
  });

  it("rejects an unsigned change of payload characters as a signature failure", async () => {
    const [h, p, s] = good.split(".") as [string, string, string];
    await expectCode(`${h}.${p.slice(0, 10)}*${p.slice(11)}.${s}`, "ERR_TOKEN_SIGNATURE");
  });

  it("treats a non-string token or bad options as caller misuse", async () => {
    await expect(validateMaaToken(42 as unknown as string, options())).rejects.toBeInstanceOf(TypeError);
    await expect(validateMaaToken(good, options({ at: new Date("nope") }))).rejects.toBeInstanceOf(TypeError);
    await expect(validateMaaToken(good, options({ clockSkewSeconds: 3600 }))).rejects.toBeInstanceOf(
      TypeError,
    );
    await expect(validateMaaToken(good, options({ clockSkewSeconds: -1 }))).rejects.toBeInstanceOf(TypeError);
  });
});

describe("validateMaaToken check 2: header", () => {
  it.each([["none"], ["HS256-with-public-pem"], ["RS384"], ["PS256"]] as const)(
    "rejects alg %s, even when signed correctly for it",
    async (alg) => {
      const name = alg === "HS256-with-public-pem" ? "HS256" : alg;
      const token = signer.sign({ ...header, alg: name }, sevSnpClaims(), alg);
      const error = await failure(token);
      expect(error.code).toBe("ERR_TOKEN_ALG");
      expect(error.violations).toEqual([{ field: "alg", expected: "RS256", actual: name }]);
    },
  );

  it("rejects a missing alg and a lower-case rs256", async () => {
    const { alg: _alg, ...noAlg } = header;
    await expectCode(signer.sign(noAlg, sevSnpClaims()), "ERR_TOKEN_ALG");
    await expectCode(signer.sign({ ...header, alg: "rs256" }, sevSnpClaims()), "ERR_TOKEN_ALG");
  });

  it("rejects a typ other than JWT, and crit or b64 parameters", async () => {
    await expectCode(signer.sign({ ...header, typ: "at+jwt" }, sevSnpClaims()), "ERR_TOKEN_MALFORMED");
    await expectCode(
      signer.sign({ ...header, crit: ["exp"], exp: 1 }, sevSnpClaims()),
      "ERR_TOKEN_MALFORMED",
    );
    await expectCode(
      signer.sign({ ...header, b64: false, crit: ["b64"] }, sevSnpClaims()),
      "ERR_TOKEN_MALFORMED",
    );
  });

  it("rejects a kid that is missing or not a string", async () => {
    const { kid: _kid, ...noKid } = header;
    await expectCode(signer.sign(noKid, sevSnpClaims()), "ERR_TOKEN_KID");
    await expectCode(signer.sign({ ...header, kid: 5 }, sevSnpClaims()), "ERR_TOKEN_KID");
    await expectCode(signer.sign({ ...header, kid: "" }, sevSnpClaims()), "ERR_TOKEN_KID");
  });
});

describe("validateMaaToken checks 3 and 4: key and signature", () => {
  it("rejects a kid the issuer does not publish", async () => {
    await expectCode(signer.sign({ ...header, kid: attacker.kid }, sevSnpClaims()), "ERR_TOKEN_KID");
  });

  it("rejects a tampered payload", async () => {
    const [h, , s] = signer.sign(header, sevSnpClaims()).split(".") as [string, string, string];
    const tampered = b64url(JSON.stringify(sevSnpClaims({ "x-ms-sevsnpvm-hostdata": "00".repeat(32) })));
    await expectCode(`${h}.${tampered}.${s}`, "ERR_TOKEN_SIGNATURE");
  });

  it("rejects a flipped signature bit and an empty signature", async () => {
    const token = signer.sign(header, sevSnpClaims());
    const [h, p, s] = token.split(".") as [string, string, string];
    const sig = Buffer.from(s, "base64url");
    sig[10] = sig[10]! ^ 1;
    await expectCode(`${h}.${p}.${b64url(sig)}`, "ERR_TOKEN_SIGNATURE");
    await expectCode(`${h}.${p}.`, "ERR_TOKEN_SIGNATURE");
  });

  it("rejects a token signed by another key under the issuer's kid", async () => {
    await expectCode(attacker.sign(header, sevSnpClaims()), "ERR_TOKEN_SIGNATURE");
  });

  it.each([
    ["jku", () => ({ jku: "https://attacker.example/certs" })],
    ["x5c", () => ({ x5c: [attacker.x5c] })],
    ["jwk", () => ({ jwk: attacker.publicKey.export({ format: "jwk" }) })],
    ["x5u", () => ({ x5u: "https://attacker.example/cert.pem" })],
  ])("never takes the key from the token's %s header", async (_name, extra) => {
    const requested: string[] = [];
    const recording: SigningKeyResolver = {
      getKey: (kid) => {
        requested.push(kid);
        return keys.getKey(kid);
      },
    };
    const token = attacker.sign({ ...header, ...extra() }, sevSnpClaims());
    await expectCode(token, "ERR_TOKEN_SIGNATURE", { keys: recording });
    expect(requested).toEqual([signer.kid]);
    // Under the attacker's own kid the issuer has no key at all.
    await expectCode(
      attacker.sign({ ...header, ...extra(), kid: attacker.kid }, sevSnpClaims()),
      "ERR_TOKEN_KID",
    );
  });

  it("rejects a key too weak for RS256 as a signature failure", async () => {
    const weak = createTestSigner(ISSUER, 1024);
    const token = weak.sign({ ...header, kid: weak.kid }, sevSnpClaims());
    await expectCode(token, "ERR_TOKEN_SIGNATURE", { keys: staticSigningKeys(weak.certsDocument()) });
  });

  it("passes resolver failures through unchanged", async () => {
    const down: SigningKeyResolver = {
      getKey: () => Promise.reject(new ShieldError("ERR_JWKS_UNAVAILABLE", "signing keys are not available")),
    };
    const error = await failure(signer.sign(header, sevSnpClaims()), { keys: down });
    expect(error.code).toBe("ERR_JWKS_UNAVAILABLE");
    expect(error.transient).toBe(true);
  });
});

describe("validateMaaToken check 5: issuer", () => {
  it("rejects an iss that is not the pinned issuer", async () => {
    const error = await failure(
      signer.sign(header, sevSnpClaims({ iss: "https://sharedwus.wus.attest.azure.net" })),
    );
    expect(error.code).toBe("ERR_TOKEN_ISSUER");
    expect(error.violations).toEqual([
      { field: "iss", expected: ISSUER, actual: "https://sharedwus.wus.attest.azure.net" },
    ]);
  });

  it("rejects a missing or non-string iss, pinned or not", async () => {
    await expectCode(signer.sign(header, sevSnpClaims({ iss: undefined })), "ERR_TOKEN_ISSUER");
    await expectCode(signer.sign(header, sevSnpClaims({ iss: 1 })), "ERR_TOKEN_ISSUER", {
      issuer: undefined,
    });
  });

  it("does not strip more than one slash or ignore case", async () => {
    await expectCode(signer.sign(header, sevSnpClaims({ iss: `${ISSUER}//` })), "ERR_TOKEN_ISSUER");
    await expectCode(signer.sign(header, sevSnpClaims({ iss: ISSUER.toUpperCase() })), "ERR_TOKEN_ISSUER");
  });

  it("checks the issuer before the lifetime", async () => {
    const token = signer.sign(header, sevSnpClaims({ iss: "https://elsewhere.example", exp: IAT - 3600 }));
    await expectCode(token, "ERR_TOKEN_ISSUER");
  });
});

describe("validateMaaToken check 6: lifetime", () => {
  const exp = IAT + 100;
  let token: string;
  beforeAll(() => {
    token = signer.sign(header, sevSnpClaims({ exp, nbf: IAT }));
  });
  const atSeconds = (seconds: number) => new Date(seconds * 1000);

  it("accepts up to the skew past exp and rejects from there on", async () => {
    await validateMaaToken(token, options({ at: atSeconds(exp + 59.999) }));
    await expectCode(token, "ERR_TOKEN_EXPIRED", { at: atSeconds(exp + 60) });
    await expectCode(token, "ERR_TOKEN_EXPIRED", { at: atSeconds(exp), clockSkewSeconds: 0 });
    await validateMaaToken(token, options({ at: atSeconds(exp - 0.001), clockSkewSeconds: 0 }));
  });

  it("accepts from the skew before nbf and rejects before that", async () => {
    await validateMaaToken(token, options({ at: atSeconds(IAT - 60) }));
    await expectCode(token, "ERR_TOKEN_NOT_YET_VALID", { at: atSeconds(IAT - 60.001) });
    await expectCode(token, "ERR_TOKEN_NOT_YET_VALID", { at: atSeconds(IAT - 1), clockSkewSeconds: 0 });
  });

  it("reports an expired token with the times involved", async () => {
    const error = await failure(token, { at: new Date("2030-01-01T00:00:00Z") });
    expect(error.code).toBe("ERR_TOKEN_EXPIRED");
    expect(error.violations[0]).toMatchObject({ field: "exp", actual: atSeconds(exp).toISOString() });
  });

  it("requires exp, and numeric exp, nbf and iat", async () => {
    await expectCode(signer.sign(header, sevSnpClaims({ exp: undefined })), "ERR_TOKEN_CLAIMS");
    await expectCode(signer.sign(header, sevSnpClaims({ exp: String(IAT + 100) })), "ERR_TOKEN_CLAIMS");
    await expectCode(signer.sign(header, sevSnpClaims({ nbf: "0" })), "ERR_TOKEN_CLAIMS");
    await expectCode(signer.sign(header, sevSnpClaims({ iat: null })), "ERR_TOKEN_CLAIMS");
  });
});

describe("validateMaaToken check 7: nonce", () => {
  it.each([
    ["a different nonce", "challenge-43"],
    ["no nonce", undefined],
    ["an object", { value: "challenge-42" }],
  ])("rejects %s", async (_name, nonce) => {
    const token = signer.sign(header, sevSnpClaims({ nonce }));
    await expectCode(token, "ERR_TOKEN_NONCE", { expectedNonce: "challenge-42" });
  });

  it("rejects a numeric nonce beyond exact integers, whose digits JSON parsing may have changed", async () => {
    const token = signer.sign(header, sevSnpClaims({ nonce: 2 ** 63 }));
    await expectCode(token, "ERR_TOKEN_NONCE", { expectedNonce: String(2 ** 63) });
  });

  it("does not look at the nonce when none is expected", async () => {
    await validateMaaToken(signer.sign(header, sevSnpClaims({ nonce: undefined })), options());
  });
});

describe("validateMaaToken check 8: runtime data", () => {
  it("rejects SEV-SNP report data of other runtime data", async () => {
    const token = signer.sign(header, sevSnpClaims());
    const other = Buffer.from(runtimeData);
    other[other.length - 2] = other[other.length - 2]! ^ 1;
    const error = await failure(token, { runtimeData: other });
    expect(error.code).toBe("ERR_TOKEN_RUNTIME_DATA");
    expect(error.violations[0]).toMatchObject({ field: "x-ms-sevsnpvm-reportdata" });
  });

  it("rejects SEV-SNP report data whose upper 32 bytes are not zero", async () => {
    const token = signer.sign(
      header,
      sevSnpClaims({ "x-ms-sevsnpvm-reportdata": sha256Hex(runtimeData) + "0".repeat(63) + "1" }),
    );
    await expectCode(token, "ERR_TOKEN_RUNTIME_DATA", { runtimeData });
  });

  it("rejects SGX report data of other runtime data, and SGX report data that is not 64 bytes of hex", async () => {
    await expectCode(signer.sign(header, sgxClaims()), "ERR_TOKEN_RUNTIME_DATA", {
      runtimeData: Buffer.from("other runtime data"),
    });
    const short = signer.sign(header, sgxClaims({ "x-ms-sgx-report-data": sha256Hex(runtimeData) }));
    await expectCode(short, "ERR_TOKEN_RUNTIME_DATA", { runtimeData });
  });

  it("rejects a token with no report data claim at all", async () => {
    const token = signer.sign(header, sevSnpClaims({ "x-ms-sevsnpvm-reportdata": undefined }));
    await expectCode(token, "ERR_TOKEN_RUNTIME_DATA", { runtimeData });
  });

  it("rejects x-ms-runtime keys that differ from the runtime data's keys", async () => {
    const otherKeys = [{ ...runtimeKeys[0], n: "different" }];
    const token = signer.sign(header, sevSnpClaims({ "x-ms-runtime": { keys: otherKeys } }));
    const error = await failure(token, { runtimeData });
    expect(error.code).toBe("ERR_TOKEN_RUNTIME_DATA");
    expect(error.violations).toEqual([
      {
        field: "x-ms-runtime.keys",
        expected: "1 key(s) [runtime-key-1]",
        actual: "1 key(s) [runtime-key-1]",
      },
    ]);
    await expectCode(signer.sign(header, sevSnpClaims({ "x-ms-runtime": {} })), "ERR_TOKEN_RUNTIME_DATA", {
      runtimeData,
    });
  });

  describe("a token that binds a key always has it compared: runtime data must be a JSON object", () => {
    const json = JSON.stringify({ keys: runtimeKeys, nonce: "n-1" });
    // The token's key is one the runtime data does not hold: only the comparison can catch it.
    const attackerKeys = [{ ...runtimeKeys[0], kid: "attacker", n: "attacker-modulus" }];
    const cases: readonly [string, Buffer, string][] = [
      [
        "a UTF-8 byte-order mark",
        Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(json)]),
        "starts with a UTF-8 byte-order mark",
      ],
      ["a JSON array", Buffer.from(`[${json}]`), "JSON array"],
      ["a JSON string", Buffer.from(JSON.stringify(json)), "JSON string"],
      ["a JSON number", Buffer.from("42"), "JSON number"],
      ["JSON null", Buffer.from("null"), "JSON null"],
      [
        "invalid UTF-8",
        Buffer.concat([Buffer.from(json.slice(0, -1)), Buffer.from([0xff, 0x7d])]),
        "not valid UTF-8",
      ],
      ["binary bytes", Buffer.from([0xde, 0xad, 0xbe, 0xef]), "not valid UTF-8"],
      ["text that is not JSON", Buffer.from("keys=attacker"), "not JSON"],
    ];

    it.each(cases)("refuses %s with ERR_TOKEN_RUNTIME_DATA", async (_label, bytes, actual) => {
      const token = signer.sign(
        header,
        sevSnpClaims({
          "x-ms-runtime": { keys: attackerKeys },
          "x-ms-sevsnpvm-reportdata": sha256Hex(bytes) + "0".repeat(64),
        }),
      );
      const error = await failure(token, { runtimeData: bytes });
      expect(error.code).toBe("ERR_TOKEN_RUNTIME_DATA");
      expect(error.violations).toEqual([{ field: "runtimeData", expected: "a UTF-8 JSON object", actual }]);
      // The message and violations name the problem, never the bytes.
      expect(JSON.stringify(error.toJSON())).not.toContain("attacker");
    });

    it("accepts binary runtime data when the token binds no key (MAA's Binary dataType)", async () => {
      const binary = cases.find(([label]) => label === "binary bytes")![1];
      const token = signer.sign(
        header,
        sevSnpClaims({
          "x-ms-runtime": undefined,
          "x-ms-sevsnpvm-reportdata": sha256Hex(binary) + "0".repeat(64),
        }),
      );
      await validateMaaToken(token, options({ runtimeData: binary }));
      // The report data is still bound to it.
      await expectCode(token, "ERR_TOKEN_RUNTIME_DATA", { runtimeData: Buffer.from([0xde, 0xad]) });
    });

    it("accepts the same JSON object without the byte-order mark, with surrounding whitespace", async () => {
      const plain = Buffer.from(` \n${JSON.stringify({ keys: runtimeKeys })}\t`);
      const token = signer.sign(
        header,
        sevSnpClaims({
          "x-ms-runtime": { keys: runtimeKeys },
          "x-ms-sevsnpvm-reportdata": sha256Hex(plain) + "0".repeat(64),
        }),
      );
      await validateMaaToken(token, options({ runtimeData: plain }));
    });
  });

  it("lists every binding violation at once", async () => {
    const token = signer.sign(header, sevSnpClaims({ "x-ms-runtime": { keys: [] } }));
    const error = await failure(token, {
      runtimeData: Buffer.from(JSON.stringify({ keys: runtimeKeys, nonce: 1 })),
    });
    expect(error.violations.map((v) => v.field)).toEqual(["x-ms-sevsnpvm-reportdata", "x-ms-runtime.keys"]);
  });
});

describe("validateMaaToken check 9: attestation type", () => {
  it("rejects a token without an attestation type", async () => {
    await expectCode(
      signer.sign(header, sevSnpClaims({ "x-ms-attestation-type": undefined })),
      "ERR_TOKEN_CLAIMS",
    );
  });

  it("rejects a type other than the required one", async () => {
    const error = await failure(signer.sign(header, sgxClaims()), { requireAttestationType: "sevsnpvm" });
    expect(error.code).toBe("ERR_TOKEN_CLAIMS");
    expect(error.violations).toEqual([
      { field: "x-ms-attestation-type", expected: "sevsnpvm", actual: "sgx" },
    ]);
  });

  it("does not take a CVM token's top-level azurevm type as its TEE type", async () => {
    const claims = {
      exp: IAT + 60,
      iss: ISSUER,
      "x-ms-attestation-type": "sevsnpvm",
      "x-ms-isolation-tee": {},
    };
    await expectCode(signer.sign(header, claims), "ERR_TOKEN_CLAIMS");
  });
});

describe("validateMaaToken check order", () => {
  it("judges the algorithm before asking for the key", async () => {
    const token = signer.sign({ ...header, alg: "none", kid: "no-such-kid" }, sevSnpClaims(), "none");
    await expectCode(token, "ERR_TOKEN_ALG");
  });

  it("judges the signature before any claim", async () => {
    const token = attacker.sign(
      header,
      sevSnpClaims({ iss: "x", exp: 1, "x-ms-attestation-type": undefined }),
    );
    await expectCode(token, "ERR_TOKEN_SIGNATURE", { expectedNonce: "other", runtimeData: Buffer.from("x") });
  });
});

describe("remembered headers", () => {
  it("still checks the signature and every claim of a token whose header was seen before", async () => {
    const issuer = await createMaaTokenIssuer({ issuer: "https://cache.attest.example" });
    const keys = staticSigningKeys(issuer.certsDocument());
    const at = new Date("2026-06-01T00:00:00Z");
    const good = await issuer.issue({ "x-ms-attestation-type": "sgx" }, { at });
    await expect(validateMaaToken(good, { keys, at })).resolves.toMatchObject({ attestationType: "sgx" });
    const [h, p, s] = good.split(".");
    const forged = `${h}.${Buffer.from(JSON.stringify({ iss: issuer.issuer, exp: 4102444800, "x-ms-attestation-type": "sevsnpvm" })).toString("base64url")}.${s}`;
    await expect(validateMaaToken(forged, { keys, at })).rejects.toMatchObject({
      code: "ERR_TOKEN_SIGNATURE",
    });
    await expect(
      validateMaaToken(good, { keys, at: new Date("2026-06-02T00:00:00Z") }),
    ).rejects.toMatchObject({
      code: "ERR_TOKEN_EXPIRED",
    });
    const none = `${Buffer.from(JSON.stringify({ alg: "none", kid: "x" })).toString("base64url")}.${p}.`;
    await expect(validateMaaToken(none, { keys, at })).rejects.toMatchObject({ code: "ERR_TOKEN_ALG" });
  });
});
