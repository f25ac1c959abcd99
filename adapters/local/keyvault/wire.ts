/**
 * Key Vault's JSON shapes (REST API 7.4–7.6, `keys.json` in Azure/azure-rest-api-specs), shared by
 * the local engine — whose signed release responses carry a key bundle — and the local HTTP
 * server. Names are snake_case where the REST spec has them so (`key_ops`, `release_policy`,
 * `key_size`), camelCase where it does (`contentType`, `recoveryLevel`, `lifetimeActions`), and
 * times are whole seconds since the epoch, as Key Vault sends them. Request bodies are parsed
 * here from `unknown` with schemas; unknown members are ignored, as the service ignores them.
 */
import { z } from "zod";
import type { LocalKeyAttributes, LocalKeyVersion, LocalRotationPolicy } from "./engine.js";

/** Versions of the data-plane API this server answers to. */
export const SUPPORTED_API_VERSIONS: readonly string[] = ["7.4", "7.5", "7.6", "2025-07-01"];

/** Key Vault's soft-delete defaults, reported on every key. */
export const RECOVERY_LEVEL = "Recoverable+Purgeable";
export const RECOVERABLE_DAYS = 90;

export interface KeyAttributesWire {
  enabled: boolean;
  exportable: boolean;
  created: number;
  updated: number;
  recoveryLevel: string;
  recoverableDays: number;
  nbf?: number;
  exp?: number;
}

export interface KeyReleasePolicyWireShape {
  contentType: string;
  data: string;
  immutable: boolean;
}

export interface KeyBundleWire {
  key: Record<string, unknown>;
  attributes: KeyAttributesWire;
  release_policy?: KeyReleasePolicyWireShape;
  tags?: Record<string, string>;
}

export interface KeyItemWire {
  kid: string;
  attributes: KeyAttributesWire;
  tags?: Record<string, string>;
}

export interface RotationPolicyWire {
  id: string;
  lifetimeActions: {
    trigger: { timeAfterCreate?: string; timeBeforeExpiry?: string };
    action: { type: string };
  }[];
  attributes: { expiryTime?: string; created?: number; updated?: number };
}

const seconds = (date: Date): number => Math.floor(date.getTime() / 1000);

export function keyAttributesToWire(attributes: LocalKeyAttributes): KeyAttributesWire {
  return {
    enabled: attributes.enabled,
    exportable: attributes.exportable,
    created: seconds(attributes.created),
    updated: seconds(attributes.updated),
    recoveryLevel: RECOVERY_LEVEL,
    recoverableDays: RECOVERABLE_DAYS,
    ...(attributes.notBefore === undefined ? {} : { nbf: seconds(attributes.notBefore) }),
    ...(attributes.expires === undefined ? {} : { exp: seconds(attributes.expires) }),
  };
}

/** The key bundle Key Vault returns from create, get, update and rotate: public parts only. */
export function keyBundleToWire(version: LocalKeyVersion): KeyBundleWire {
  return {
    key: { kid: version.kid, kty: version.kty, key_ops: [...version.keyOps], ...version.publicKey },
    attributes: keyAttributesToWire(version.attributes),
    ...(version.releasePolicy === undefined
      ? {}
      : {
          release_policy: {
            contentType: version.releasePolicy.contentType,
            data: version.releasePolicy.data,
            immutable: version.releasePolicy.immutable,
          },
        }),
    ...(version.tags === undefined ? {} : { tags: { ...version.tags } }),
  };
}

export function keyItemToWire(version: LocalKeyVersion): KeyItemWire {
  return {
    kid: version.kid,
    attributes: keyAttributesToWire(version.attributes),
    ...(version.tags === undefined ? {} : { tags: { ...version.tags } }),
  };
}

export function rotationPolicyToWire(id: string, policy: LocalRotationPolicy): RotationPolicyWire {
  return {
    id,
    lifetimeActions: policy.lifetimeActions.map((action) => ({
      trigger: {
        ...(action.timeAfterCreate === undefined ? {} : { timeAfterCreate: action.timeAfterCreate }),
        ...(action.timeBeforeExpiry === undefined ? {} : { timeBeforeExpiry: action.timeBeforeExpiry }),
      },
      action: { type: action.action },
    })),
    attributes: {
      ...(policy.expiryTime === undefined ? {} : { expiryTime: policy.expiryTime }),
      ...(policy.created === undefined ? {} : { created: seconds(policy.created) }),
      ...(policy.updated === undefined ? {} : { updated: seconds(policy.updated) }),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Request bodies

/** Seconds since the epoch, as Key Vault's `nbf`/`exp`. */
const epochSeconds = z.number().int().min(0).max(253402300799);
const tags = z.record(z.string().max(512), z.string().max(256));
const keyOps = z.array(z.string().max(32)).max(16);

export const releasePolicyWireSchema = z
  .object({
    contentType: z.string().max(128).nullish(),
    data: z.string().max(128 * 1024),
    immutable: z.boolean().nullish(),
  })
  .loose();

const attributesSchema = z
  .object({
    enabled: z.boolean().nullish(),
    nbf: epochSeconds.nullish(),
    exp: epochSeconds.nullish(),
    exportable: z.boolean().nullish(),
  })
  .loose();

export const createKeyBodySchema = z
  .object({
    kty: z.string().max(32),
    key_size: z.number().int().nullish(),
    public_exponent: z.number().int().nullish(),
    key_ops: keyOps.nullish(),
    attributes: attributesSchema.nullish(),
    tags: tags.nullish(),
    crv: z.string().max(16).nullish(),
    release_policy: releasePolicyWireSchema.nullish(),
  })
  .loose();

export const updateKeyBodySchema = z
  .object({
    key_ops: keyOps.nullish(),
    attributes: attributesSchema.nullish(),
    tags: tags.nullish(),
    release_policy: releasePolicyWireSchema.nullish(),
  })
  .loose();

export const releaseBodySchema = z
  .object({
    target: z.string(),
    nonce: z.string().nullish(),
    enc: z.string().nullish(),
  })
  .loose();

/** `POST /keys/{name}/{version}/sign`: `{alg, value: base64url digest}`. */
export const signBodySchema = z
  .object({
    alg: z.string().max(16),
    value: z
      .string()
      .max(172)
      .regex(/^[A-Za-z0-9_-]+={0,2}$/),
  })
  .loose();

export const rotationPolicyBodySchema = z
  .object({
    lifetimeActions: z
      .array(
        z
          .object({
            trigger: z
              .object({
                timeAfterCreate: z.string().max(64).nullish(),
                timeBeforeExpiry: z.string().max(64).nullish(),
              })
              .loose()
              .nullish(),
            action: z.object({ type: z.string().max(32) }).loose(),
          })
          .loose(),
      )
      .max(8)
      .nullish(),
    attributes: z
      .object({ expiryTime: z.string().max(64).nullish() })
      .loose()
      .nullish(),
  })
  .loose();

export type ReleasePolicyWireBody = z.infer<typeof releasePolicyWireSchema>;
export type CreateKeyBody = z.infer<typeof createKeyBodySchema>;
export type UpdateKeyBody = z.infer<typeof updateKeyBodySchema>;
export type ReleaseBody = z.infer<typeof releaseBodySchema>;
export type RotationPolicyBody = z.infer<typeof rotationPolicyBodySchema>;

/** `null` and `undefined` both mean "not given" on the wire. */
export function given<T>(value: T | null | undefined): T | undefined {
  return value === null ? undefined : value;
}

export function dateFromSeconds(value: number | null | undefined): Date | undefined {
  return value === null || value === undefined ? undefined : new Date(value * 1000);
}
