/** What the fixture function app's handlers saw, for the local host's tests. */
export interface Call {
  readonly functionName: string;
  readonly input: unknown;
  readonly triggerMetadata: Record<string, unknown> | undefined;
  readonly at: number;
}

export const calls: Call[] = [];
export const hookEvents: string[] = [];
