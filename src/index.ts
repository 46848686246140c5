/**
 * berth's public API. Named exports only; everything a user needs is importable from 'berth'.
 */

export * from './errors.js';
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
