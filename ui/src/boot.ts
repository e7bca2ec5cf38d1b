// The page's first script (index.html runs it before app.js): it reads the
// token and starts the VMs screen's API requests (early.ts) while the
// browser is still fetching and compiling the app.
import './early';
