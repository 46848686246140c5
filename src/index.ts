/**
 * berth's public API. Named exports only; everything a user needs is importable from 'berth'.
 */

export * from './errors.js';
export type { FdTarget, ListenTarget, PathTarget, PortTarget } from './listen.js';
export {
  type ClientHello,
  ClientHelloDecoder,
  encodeClientHello,
  encodeFrame,
  encodeRefusal,
  encodeServerHello,
  type Frame,
  FrameDecoder,
  type FrameDecoderOptions,
  FrameEncoder,
  type FrameSource,
  isRefusal,
  type Refusal,
  type ServerHello,
  ServerHelloDecoder,
} from './protocol/codec.js';
export {
  type ByteOrder,
  ClientFrame,
  ErrorCode,
  errorCodeName,
  FLAG_END,
  FRAME_HEADER_SIZE,
  MAX_APPLICATION_ERROR_CODE,
  PROTOCOL_VERSION,
  ReservedTask,
  ServerFrame,
} from './protocol/codes.js';
export {
  ALWAYS_FAILS,
  BAD_INPUT,
  createDemoTaskServer,
  DEMO_TASK_PORT,
  DemoTask,
  registerDemoTasks,
} from './protocol/demo-tasks.js';
export {
  type CallOptions,
  TASK_CLIENT_DEFAULTS,
  type TaskBody,
  TaskClient,
  type TaskClientOptions,
  type TaskClientStats,
  type TaskInfo,
} from './protocol/task-client.js';
export type {
  TaskConnection,
  TaskConnectionStats,
  TaskMetadata,
} from './protocol/task-connection.js';
export type {
  ParseFunction,
  RunFunction,
  RunStep,
  Task,
  TaskContext,
  TaskHandler,
  TaskResponse,
} from './protocol/task-definition.js';
export type { Outcome, TaskServerStats } from './protocol/task-metrics.js';
export {
  type RegisteredTask,
  TASK_SERVER_DEFAULTS,
  TaskServer,
  type TaskServerOptions,
} from './protocol/task-server.js';
export type { CloseOptions, Service, ServiceState } from './service.js';
export { isService } from './service.js';
export {
  type ConnectionContext,
  type ConnectionHandler,
  TCP_SERVICE_DEFAULTS,
  TcpService,
  type TcpServiceOptions,
  type TcpStats,
} from './tcp/tcp-service.js';
