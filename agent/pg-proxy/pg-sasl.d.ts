/** The SCRAM-SHA-256 client of `pg` (lib/crypto/sasl.js), which ships no types of its own. */
declare module "pg/lib/crypto/sasl.js" {
  interface SaslSession {
    mechanism: string;
    response: string;
  }
  const sasl: {
    startSession(mechanisms: readonly string[], stream?: unknown): SaslSession;
    continueSession(
      session: SaslSession,
      password: string,
      serverData: string,
      stream?: unknown,
    ): Promise<void>;
    finalizeSession(session: SaslSession, serverData: string): void;
  };
  export default sasl;
}
