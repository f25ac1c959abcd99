/**
 * Azure built-in role definitions the templates assign, name → GUID, as Azure's built-in role
 * documentation lists them (MicrosoftDocs `articles/role-based-access-control/built-in-roles`,
 * the Security, Storage, Integration and Monitor pages) and, for Managed HSM's local RBAC,
 * `articles/key-vault/managed-hsm/built-in-roles.md`. The tests compare the templates' GUIDs and
 * the role names in their comments with this table.
 */
export const BUILTIN_ROLES: Readonly<Record<string, string>> = {
  "Key Vault Crypto Service Release User": "08bbd89e-9f13-488c-ac41-acfcb10c90ab",
  "Key Vault Crypto User": "12338af0-0e69-4776-bea7-57ae8d297424",
  "Key Vault Crypto Officer": "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
  "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
  "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
  "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
  "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
  "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
  "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
  "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
  "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
  "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
};

/** Managed HSM local RBAC roles (granted by infra/hooks/postprovision.sh by name). */
export const MANAGED_HSM_ROLES: Readonly<Record<string, string>> = {
  "Managed HSM Crypto Service Release User": "21dbd100-6940-42c2-9190-5d6cb909625c",
  "Managed HSM Crypto User": "21dbd100-6940-42c2-9190-5d6cb909625b",
  "Managed HSM Crypto Officer": "515eb02d-2335-4d2d-92f2-b1cbdf9c3778",
};
