package replay

// SyncEvery lets tests change syncEvery.
var SyncEvery = &syncEvery
