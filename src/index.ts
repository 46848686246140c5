/**
 * berth's public API. Named exports only; everything a user needs is importable from 'berth'.
 */

export {
  type ClusterOptions,
  createClusterPrimary,
  resolveWorkers,
  runCluster,
} from './cluster/cluster.js';
export { runWorker, type WorkerOptions } from './cluster/worker.js';
export {
  WORKER_POOL_DEFAULTS,
  type WorkerInfo,
  WorkerPool,
  type WorkerPoolEvents,
  type WorkerPoolOptions,
  type WorkerPoolStats,
} from './cluster/worker-pool.js';
export type { DescriptorEvent, DescriptorStats } from './diagnostics/descriptor-watch.js';
export {
  DIAGNOSTICS_DEFAULTS,
  DiagnosticsServer,
  type DiagnosticsServerOptions,
  findPackageVersion,
  type Readiness,
} from './diagnostics/diagnostics-server.js';
export * from './errors.js';
export {
  HTTP_SERVICE_DEFAULTS,
  type HttpApp,
  HttpService,
  type HttpServiceOptions,
  type HttpStats,
  isHttpApp,
  MAX_UNREAD_BODY,
  type NodeHttpServer,
  type RequestHandler,
  type StatusClasses,
  type UpgradeContext,
  type UpgradeHandler,
} from './http/http-service.js';
export {
  type Activity,
  IDLE_TRACKER_DEFAULTS,
  type IdleClock,
  type IdleStats,
  IdleTracker,
  type IdleTrackerOptions,
  systemClock,
} from './idle/idle-tracker.js';
export type { FdTarget, ListenTarget, PathTarget, PortTarget } from './listen.js';
export type { BackoffOptions } from './protocol/channel/backoff.js';
export type { Endpoint } from './protocol/channel/endpoint.js';
export type { BalancePolicy } from './protocol/channel/picker.js';
export type { Lookup } from './protocol/channel/resolver.js';
export type { ConnectionOptions } from './protocol/channel/subchannel.js';
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
  type ChannelCallOptions,
  TASK_CHANNEL_DEFAULTS,
  TaskChannel,
  type TaskChannelOptions,
  type TaskChannelStats,
} from './protocol/task-channel.js';
export {
  type CallCallback,
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
export {
  type RunResult,
  run,
  SERVICE_GROUP_DEFAULTS,
  ServiceGroup,
  type ServiceGroupEvents,
  type ServiceGroupOptions,
  type ServiceOutcome,
  type ShutdownInfo,
  type StopReason,
} from './runner/service-group.js';
export type { CloseOptions, Service, ServiceState } from './service.js';
export { isService } from './service.js';
export {
  ACCEPTED_CONNECTION_DEFAULTS,
  type AcceptedConnection,
  type AcceptedConnectionOptions,
  acceptedConnection,
  isConnectionFd,
  serveOneConnection,
} from './systemd/accepted-connection.js';
export {
  CONNECTION_FD_NAME,
  describeListenFds,
  findListenFd,
  findListenFds,
  LISTEN_FDS_DEFAULTS,
  LISTEN_FDS_START,
  type ListenFd,
  type ListenFdsOptions,
  listenFdAt,
  listenFds,
  selectListenFd,
  UNKNOWN_FD_NAME,
} from './systemd/listen-fds.js';
export {
  formatNotifyMessage,
  loadNotifyAddon,
  NOTIFIER_DEFAULTS,
  Notifier,
  type NotifierOptions,
  type NotifierStats,
  type NotifyEnv,
  type NotifyFields,
  type NotifyTransportName,
  notifySocketAddress,
  parseNotifyEnv,
  statusText,
  watchdogPingInterval,
} from './systemd/notify.js';
export {
  classifyRow,
  findInetRow,
  findUnixRow,
  type InspectSocketOptions,
  inspectSocket,
  type SocketInfo,
  type SocketKind,
  type SocketRow,
  type SocketTable,
  socketInode,
} from './systemd/socket-kind.js';
export {
  type ConnectionContext,
  type ConnectionHandler,
  TCP_SERVICE_DEFAULTS,
  TcpService,
  type TcpServiceOptions,
  type TcpStats,
} from './tcp/tcp-service.js';
