//! bproc links: async framed connections and the cluster-key handshake
